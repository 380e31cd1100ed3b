package balancer

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// Every relay (the event loop for plain TCP, the hybrid relay for a TLS
// client, the goroutine pair where the loop is off) moves large messages
// both ways, closes cleanly and leaves the counts at zero; and the relay the
// test asks for is the one that served the connection. Without that check,
// an event loop that failed to start would pass as the goroutine pair it
// falls back to.
func TestRelayModes(t *testing.T) {
	linux := runtime.GOOS == "linux"
	for _, tc := range []struct {
		name string
		loop bool // setEventLoop
		tls  bool // the client speaks TLS to the proxy
		// want: the relay that serves the connection. The event loop and
		// the hybrid relay exist on Linux only; elsewhere goroutines
		// always relay.
		want string
	}{
		{name: "event loop", loop: true, want: map[bool]string{true: "loop", false: "goroutines"}[linux]},
		{name: "hybrid", loop: true, tls: true, want: map[bool]string{true: "hybrid", false: "goroutines"}[linux]},
		{name: "goroutines", loop: false, want: "goroutines"},
		{name: "goroutines TLS", loop: false, tls: true, want: "goroutines"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			setEventLoop(tc.loop)
			defer setEventLoop(true)
			url, d, ups := newTestProxyTLS(t, 1, tc.tls)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, _, err := d.DialContext(ctx, url, nil)
			if err != nil {
				t.Fatal(err)
			}
			msg := make([]byte, 3<<20)
			rand.Read(msg)
			done := make(chan error, 1)
			go func() { done <- c.WriteMessage(websocket.BinaryMessage, msg) }()
			c.SetReadDeadline(time.Now().Add(15 * time.Second))
			_, got, err := c.ReadMessage()
			if err != nil || !bytes.Equal(got, msg) || <-done != nil {
				t.Fatalf("3 MiB echo: %v (%d bytes back)", err, len(got))
			}
			if by, err := servedBy(t, ups[0].Backend); err != nil {
				t.Fatal(err)
			} else if by != tc.want {
				t.Fatalf("relayed by %s, want %s (event loop error: %v)", by, tc.want, eventLoopErr())
			}
			// Closing the backend side: the client gets a close frame.
			ups[0].CloseConnections(protocol.CloseServiceRestart, "test restart", 0)
			_, _, err = c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != protocol.CloseServiceRestart {
				t.Fatalf("after CloseConnections: %v, want close %d", err, protocol.CloseServiceRestart)
			}
			deadline := time.Now().Add(5 * time.Second)
			for ups[0].Live() != 0 {
				if time.Now().After(deadline) {
					t.Fatalf("live %d after close", ups[0].Live())
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// servedBy reports which relay serves the one connection b relays: "loop",
// "hybrid" or "goroutines". The relay is tracked just after it starts,
// which can be after its first echo.
func servedBy(t *testing.T, b *Backend) (string, error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		rs := b.relays.collect(0, nil)
		b.mu.Unlock()
		switch {
		case len(rs) == 1 && rs[0].ev.Load() != nil:
			return "loop", nil
		case len(rs) == 1 && rs[0].hy != nil:
			return "hybrid", nil
		case len(rs) == 1:
			return "goroutines", nil
		case len(rs) > 1 || time.Now().After(deadline):
			return "", fmt.Errorf("backend tracks %d relays, want 1", len(rs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
