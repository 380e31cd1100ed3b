package test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// 1,000 clients from one IP over max_conns_per_ip: the excess
// get 429, and clients from other IPs are unaffected.
func TestMaxConnsPerIP(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bs := startEchoes(t, 2, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\tmax_conns_per_ip 100\n"))
	url := caddy.URL("/ws")

	var ok, limited atomic.Int64
	var mu sync.Mutex
	var conns []*websocket.Conn
	var other []error
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	keep := func(c *websocket.Conn) {
		mu.Lock()
		conns = append(conns, c)
		mu.Unlock()
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	// The flood: 1,000 from 127.0.0.2.
	for range 1000 {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, resp, err := harness.DialFrom(ctx, "127.0.0.2", url, nil)
			switch {
			case err == nil:
				ok.Add(1)
				keep(c)
			case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
				limited.Add(1)
			default:
				mu.Lock()
				other = append(other, err)
				mu.Unlock()
			}
		}()
	}
	// Meanwhile, 10 clients from each of 127.0.1.1..20.
	var innocentFailed atomic.Int64
	var innocentWG sync.WaitGroup
	for i := range 20 {
		for range 10 {
			innocentWG.Add(1)
			go func() {
				defer innocentWG.Done()
				c, _, err := harness.DialFrom(ctx, fmt.Sprintf("127.0.1.%d", i+1), url, nil)
				if err != nil {
					innocentFailed.Add(1)
					return
				}
				keep(c)
			}()
		}
	}
	wg.Wait()
	innocentWG.Wait()
	t.Logf("flood from one IP: %d connected, %d got 429, %d other errors; clients of other IPs failed: %d",
		ok.Load(), limited.Load(), len(other), innocentFailed.Load())
	if ok.Load() != 100 || limited.Load() != 900 {
		t.Errorf("flooding IP: %d connected and %d limited, want 100 and 900", ok.Load(), limited.Load())
	}
	if len(other) > 0 {
		t.Errorf("%d unexpected errors, first: %v", len(other), other[0])
	}
	if n := innocentFailed.Load(); n > 0 {
		t.Errorf("%d clients of other IPs failed", n)
	}
	// A slot is freed when a connection closes.
	mu.Lock()
	var victim *websocket.Conn
	for _, c := range conns {
		if strings.HasPrefix(c.LocalAddr().String(), "127.0.0.2:") {
			victim = c
			break
		}
	}
	mu.Unlock()
	victim.Close()
	if !harness.WaitFor(ctx, 5*time.Second, func() bool {
		c, _, err := harness.DialFrom(ctx, "127.0.0.2", url, nil)
		if err != nil {
			return false
		}
		keep(c)
		return true
	}) {
		t.Error("no slot freed for the flooding IP after one of its connections closed")
	}
}

// upgrade_rate limits upgrades per IP with 429 and Retry-After; other IPs
// are unaffected.
func TestUpgradeRate(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 1, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\tupgrade_rate 2/s 5\n"))
	url := caddy.URL("/ws")
	var ok, limited int
	retryAfter := ""
	for range 20 {
		c, resp, err := harness.DialFrom(ctx, "127.0.0.3", url, nil)
		switch {
		case err == nil:
			ok++
			defer c.Close()
		case resp != nil && resp.StatusCode == http.StatusTooManyRequests:
			limited++
			retryAfter = resp.Header.Get("Retry-After")
		default:
			t.Fatalf("dialing: %v", err)
		}
	}
	t.Logf("20 quick upgrades at 2/s burst 5: %d allowed, %d got 429 (Retry-After %q)", ok, limited, retryAfter)
	if ok < 5 || ok > 6 || retryAfter == "" {
		t.Errorf("%d upgrades allowed (want 5, the burst) and Retry-After %q", ok, retryAfter)
	}
	c, _, err := harness.DialFrom(ctx, "127.0.0.4", url, nil)
	if err != nil {
		t.Fatalf("another IP was limited: %v", err)
	}
	c.Close()
}

// origins: a listed origin is let through, others get 403, requests
// without Origin pass.
func TestOrigins(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 1, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\torigins https://app.example.com *.example.org\n"))
	for origin, want := range map[string]int{
		"https://app.example.com":   http.StatusSwitchingProtocols,
		"https://APP.example.com":   http.StatusSwitchingProtocols,
		"https://a.example.org":     http.StatusSwitchingProtocols,
		"http://a.example.org:8080": http.StatusForbidden,
		"https://evil.example.com":  http.StatusForbidden,
		"http://app.example.com":    http.StatusForbidden,
		"null":                      http.StatusForbidden,
		"":                          http.StatusSwitchingProtocols,
	} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c, resp, err := harness.Dial(ctx, caddy.URL("/ws"), h)
		got := 0
		if resp != nil {
			got = resp.StatusCode
		}
		if err == nil {
			c.Close()
		}
		if got != want {
			t.Errorf("origin %q: status %d, want %d (%v)", origin, got, want, err)
		}
	}
}

// idle_timeout closes a silent connection with 1001 and leaves a talking
// one alone.
func TestIdleTimeout(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 1, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\tidle_timeout 600ms\n"))
	conns := dialMany(t, ctx, caddy.URL("/ws"), 2, 2)
	silent, talker := conns[0], conns[1]
	start := time.Now()
	stop := make(chan struct{})
	talkErr := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				talkErr <- nil
				return
			case <-time.After(150 * time.Millisecond):
			}
			if err := harness.Echo(talker, "ping", 2*time.Second); err != nil {
				talkErr <- err
				return
			}
		}
	}()
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, _, err := silent.ReadMessage()
	took := time.Since(start)
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("silent connection: %v, want close 1001", err)
	}
	t.Logf("silent connection closed with 1001 after %v (idle_timeout 600ms)", took.Round(time.Millisecond))
	if took < 550*time.Millisecond || took > 1500*time.Millisecond {
		t.Errorf("closed after %v, want about 600-750ms", took)
	}
	time.Sleep(time.Second)
	close(stop)
	if err := <-talkErr; err != nil {
		t.Errorf("talking connection: %v", err)
	}
}

// 500 half-open handshakes (slowloris) do not keep a normal
// client from connecting within 1 s; Caddy's read_header timeout (3s in
// the harness) ends them.
func TestSlowlorisDoesNotBlock(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 1, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\tmax_conns_per_ip 1000\n"))
	var slow []net.Conn
	defer func() {
		for _, c := range slow {
			c.Close()
		}
	}()
	for i := range 500 {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 2, byte(i%250+1))}}
		c, err := d.DialContext(ctx, "tcp", caddy.Addr())
		if err != nil {
			t.Fatalf("slow connection %d: %v", i, err)
		}
		fmt.Fprintf(c, "GET /ws HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\n", caddy.Addr())
		slow = append(slow, c)
	}
	time.Sleep(200 * time.Millisecond)
	start := time.Now()
	c, _, err := harness.Dial(ctx, caddy.URL("/ws"), nil)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("normal client during slowloris: %v", err)
	}
	defer c.Close()
	if err := harness.Echo(c, "hello", time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("normal client connected in %v beside 500 half-open handshakes", took.Round(time.Microsecond))
	if took > time.Second {
		t.Errorf("normal client took %v to connect, want under 1s", took)
	}
	// The read_header timeout closes the half-open ones.
	buf := make([]byte, 1)
	slow[0].SetReadDeadline(time.Now().Add(10 * time.Second))
	t0 := time.Now()
	_, err = slow[0].Read(buf)
	t.Logf("a half-open handshake was ended after %v more (%v)", time.Since(t0).Round(time.Millisecond), err)
	if err == nil || isTimeout(err) {
		t.Errorf("half-open handshake not ended by the server: %v", err)
	}
}
