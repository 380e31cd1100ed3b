package balancer

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseSourceAddrs(t *testing.T) {
	for _, tc := range []struct {
		in   []string
		want string
		err  string
	}{
		{[]string{"127.0.0.2", "127.0.0.3"}, "127.0.0.2 127.0.0.3", ""},
		{[]string{"10.0.0.0/30"}, "10.0.0.1 10.0.0.2", ""},
		{[]string{"10.0.0.4/31"}, "10.0.0.4 10.0.0.5", ""},
		{[]string{"10.0.0.9/32"}, "10.0.0.9", ""},
		{[]string{"fd00::/126"}, "fd00:: fd00::1 fd00::2 fd00::3", ""},
		{[]string{"::ffff:127.0.0.2"}, "127.0.0.2", ""},
		{[]string{"nonsense"}, "", "neither an IP nor a CIDR"},
		{[]string{"10.0.0.0/8"}, "", "expands past"},
	} {
		got, err := ParseSourceAddrs(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		var s []string
		for _, a := range got {
			s = append(s, a.String())
		}
		if strings.Join(s, " ") != tc.want || err != nil {
			t.Errorf("%v: got %v %v, want %s", tc.in, s, err, tc.want)
		}
	}
}

func TestSourceDialerSpreads(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addrs := []netip.Addr{netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3")}
	d, err := NewSourceDialer(addrs, time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for range 10 {
		c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		seen[c.LocalAddr().(*net.TCPAddr).IP.String()]++
		c.Close()
	}
	if seen["127.0.0.2"] != 5 || seen["127.0.0.3"] != 5 {
		t.Fatalf("dials spread as %v, want 5 from each source", seen)
	}
}
