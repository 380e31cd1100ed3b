package test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// A wss:// backend: the upstream side is TLS, so the goroutine relay carries
// these connections (the event loop takes plain TCP only). Echo, a large
// message and the kill-close path all work there too.
func TestWSSBackend(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	up := websocket.Upgrader{}
	var mu sync.Mutex
	var held []*websocket.Conn
	be := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		mu.Lock()
		held = append(held, c)
		mu.Unlock()
		c.SetReadLimit(64 << 20)
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if c.WriteMessage(mt, msg) != nil {
				return
			}
		}
	}))
	t.Cleanup(be.Close)
	backend := "wss://" + strings.TrimPrefix(be.URL, "https://")
	caddy := harness.StartCaddy(t, fmt.Sprintf("\tws_balancer {\n\t\tbackends %s\n\t\ttls_insecure_skip_verify\n\t}\n", backend))

	conns := dialMany(t, ctx, caddy.URL("/tls"), 20, 4)
	for i, c := range conns {
		if err := harness.Echo(c, fmt.Sprintf("over tls %d", i), 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	big := strings.Repeat("x", 4<<20)
	if err := harness.Echo(conns[0], big, 20*time.Second); err != nil {
		t.Fatalf("4 MiB over the TLS upstream: %v", err)
	}
	s, err := caddy.Backends()
	if err != nil || s.TotalLive != 20 {
		t.Fatalf("admin: %+v %v, want 20 live", s, err)
	}

	// The backend's connections drop (TCP closed under TLS, no close
	// frame): every client is closed, with a close frame from the relay.
	mu.Lock()
	for _, c := range held {
		c.NetConn().Close()
	}
	mu.Unlock()
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		if _, ok := err.(*websocket.CloseError); !ok {
			t.Fatalf("connection %d after the backend closed: %v, want a close frame", i, err)
		}
	}
	if !harness.WaitFor(ctx, 5*time.Second, func() bool {
		s, err := caddy.Backends()
		return err == nil && s.TotalLive == 0
	}) {
		t.Fatal("live count did not return to 0")
	}
}
