package balancer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"time"
)

// SourceDialer dials backends from a pool of local addresses. One source
// address can hold only about 64K connections to one backend ip:port (one
// ephemeral port each); N addresses hold N times as many.
//
// Each dial binds its source address with IP_BIND_ADDRESS_NO_PORT, so the
// port is chosen at connect time for the full 4-tuple. Without it, bind
// reserves a port for every destination at once, and the proxy's own binds
// exhaust the ports its clients and other dials need.
type SourceDialer struct {
	dialers []*net.Dialer
	next    atomic.Uint64
}

// maxSourceAddrs bounds how many addresses a CIDR may expand to.
const maxSourceAddrs = 1024

// ParseSourceAddrs expands a config's source addresses: single IPs, or
// CIDR prefixes (every address in the prefix, network and broadcast
// addresses of IPv4 prefixes shorter than /31 excluded).
func ParseSourceAddrs(specs []string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, s := range specs {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("source address %q is neither an IP nor a CIDR prefix", s)
		}
		p = p.Masked()
		first, last := p.Addr(), lastAddr(p)
		if p.Addr().Is4() && p.Bits() < 31 {
			first, last = first.Next(), last.Prev()
		}
		for a := first; a.IsValid() && a.Compare(last) <= 0; a = a.Next() {
			out = append(out, a)
			if len(out) > maxSourceAddrs {
				return nil, fmt.Errorf("source addresses: %q expands past %d addresses", s, maxSourceAddrs)
			}
		}
	}
	return out, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		bitsBefore := i * 8
		switch {
		case p.Bits() <= bitsBefore:
			b[i] = 0xff
		case p.Bits() < bitsBefore+8:
			b[i] |= 0xff >> (p.Bits() - bitsBefore)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// NewSourceDialer returns a dialer spreading dials round-robin over addrs.
func NewSourceDialer(addrs []netip.Addr, timeout, keepAlive time.Duration) (*SourceDialer, error) {
	if len(addrs) == 0 {
		return nil, errors.New("no source addresses")
	}
	d := &SourceDialer{}
	for _, a := range addrs {
		d.dialers = append(d.dialers, &net.Dialer{
			Timeout:   timeout,
			KeepAlive: keepAlive,
			LocalAddr: &net.TCPAddr{IP: a.AsSlice()},
			Control:   bindAddressNoPort,
		})
	}
	return d, nil
}

// DialContext dials address from the next source address; if that one has
// no port left for the destination (EADDRNOTAVAIL), it tries the others.
func (d *SourceDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	n := uint64(len(d.dialers))
	start := d.next.Add(1)
	var err error
	for i := range n {
		var conn net.Conn
		conn, err = d.dialers[(start+i)%n].DialContext(ctx, network, address)
		if err == nil {
			return conn, nil
		}
		if !errors.Is(err, syscall.EADDRNOTAVAIL) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("all %d source addresses out of ports for %s: %w", n, address, err)
}
