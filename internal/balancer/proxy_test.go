package balancer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// gorillaEcho is a backend echoing every message of each connection until
// the client goes away.
func gorillaEcho() http.Handler {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})
}

// newTestProxy starts n gorilla echo backends and an HTTP server proxying
// upgrades over them; everything stops with the test.
func newTestProxy(tb testing.TB, n int) (url string, ups []*Upstream) {
	url, _, ups = newTestProxyTLS(tb, n, false)
	return url, ups
}

// newTestProxyTLS is newTestProxy whose front serves HTTPS if tlsFront
// (the clients of an HTTPS site): it returns a wss:// URL and a dialer that
// trusts the test certificate; otherwise ws:// and the default dialer.
func newTestProxyTLS(tb testing.TB, n int, tlsFront bool) (url string, d *websocket.Dialer, ups []*Upstream) {
	tb.Helper()
	store := NewBackendStore()
	for range n {
		be := httptest.NewServer(gorillaEcho())
		tb.Cleanup(be.Close)
		u, err := ParseBackendURL(be.Listener.Addr().String())
		if err != nil {
			tb.Fatal(err)
		}
		ups = append(ups, &Upstream{Backend: store.Acquire(u.Host), ID: u.Host, URL: u})
	}
	pool := new(Pool)
	pool.Set(ups)
	p := NewProxy(pool, store, nil)
	front := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := p.ServeUpgrade(w, r, ForwardedFor{ClientIP: "127.0.0.1"}, nil); err != nil {
			if e, ok := err.(*Error); ok {
				http.Error(w, e.Error(), e.Status)
			}
		}
	}))
	d = websocket.DefaultDialer
	if tlsFront {
		front.StartTLS()
		d = &websocket.Dialer{TLSClientConfig: front.Client().Transport.(*http.Transport).TLSClientConfig, HandshakeTimeout: 10 * time.Second}
	} else {
		front.Start()
	}
	tb.Cleanup(front.Close)
	return "ws" + strings.TrimPrefix(front.URL, "http"), d, ups
}

func TestProxyCountsConnections(t *testing.T) {
	t.Parallel()
	url, ups := newTestProxy(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var conns []*websocket.Conn
	for range 10 {
		c, _, err := websocket.DefaultDialer.DialContext(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if a, b := ups[0].Live(), ups[1].Live(); a != 5 || b != 5 {
		t.Fatalf("live %d/%d, want 5/5", a, b)
	}
	for _, c := range conns {
		c.Close()
	}
	deadline := time.Now().Add(5 * time.Second)
	for ups[0].Live()+ups[1].Live() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("live %d/%d after all closed", ups[0].Live(), ups[1].Live())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// BenchmarkUpgrade measures one proxied handshake end to end on loopback:
// client dial, proxy selection, upstream dial and handshake, hijack, relay
// start and close. Allocations include the gorilla client and backend.
func BenchmarkUpgrade(b *testing.B) {
	url, _ := newTestProxy(b, 3)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		c, _, err := websocket.DefaultDialer.DialContext(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkRelayEcho measures a 64-byte message to the backend and back
// through the relay on one connection.
func BenchmarkRelayEcho(b *testing.B) {
	url, _ := newTestProxy(b, 1)
	c, _, err := websocket.DefaultDialer.Dial(url, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	b.ReportAllocs()
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
			b.Fatal(err)
		}
		if _, _, err := c.ReadMessage(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRelayEchoTLS is BenchmarkRelayEcho with the client speaking TLS
// to the proxy (an HTTPS site), relayed by the hybrid relay (Linux) and by
// the goroutine pair.
func BenchmarkRelayEchoTLS(b *testing.B) {
	for _, mode := range []struct {
		name string
		loop bool
	}{{"hybrid", true}, {"goroutines", false}} {
		b.Run(mode.name, func(b *testing.B) {
			setEventLoop(mode.loop)
			defer setEventLoop(true)
			url, d, _ := newTestProxyTLS(b, 1, true)
			c, _, err := d.Dial(url, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			msg := make([]byte, 64)
			b.ReportAllocs()
			b.SetBytes(int64(len(msg)))
			for b.Loop() {
				if err := c.WriteMessage(websocket.BinaryMessage, msg); err != nil {
					b.Fatal(err)
				}
				if _, _, err := c.ReadMessage(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
