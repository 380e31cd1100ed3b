package wsbackend

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Both relays (the event loop for plain TCP, the goroutine pair for TLS and
// where the loop is off) move large messages both ways, close cleanly and
// leave the counts at zero; and the relay the test asks for is the one that
// served the connection. Without that check, an event loop that failed to
// start would pass as the goroutine pair it falls back to.
func TestRelayModes(t *testing.T) {
	for _, tc := range []struct {
		name string
		loop bool // SetEventLoop
		// wantLoop: the event loop relays the connection. It exists on
		// Linux only; elsewhere goroutines always do.
		wantLoop bool
	}{
		{name: "event loop", loop: true, wantLoop: runtime.GOOS == "linux"},
		{name: "goroutines", loop: false, wantLoop: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			SetEventLoop(tc.loop)
			defer SetEventLoop(true)
			url, ups := newTestProxy(t, 1)
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			c, _, err := websocket.DefaultDialer.DialContext(ctx, url, nil)
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
			if loop, err := servedByEventLoop(t, ups[0].Backend); err != nil {
				t.Fatal(err)
			} else if loop != tc.wantLoop {
				t.Fatalf("relayed by the event loop: %v, want %v (event loop error: %v)", loop, tc.wantLoop, eventLoopErr())
			}
			// Closing the backend side: the client gets a close frame.
			ups[0].CloseConnections(CloseServiceRestart, "test restart", 0)
			_, _, err = c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != CloseServiceRestart {
				t.Fatalf("after CloseConnections: %v, want close %d", err, CloseServiceRestart)
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

// servedByEventLoop reports whether the one connection b relays is relayed
// by the event loop (true) or by two goroutines (false). The relay is
// tracked just after it starts, which can be after its first echo.
func servedByEventLoop(t *testing.T, b *Backend) (bool, error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		rs := b.relays.collect(0, nil)
		b.mu.Unlock()
		switch {
		case len(rs) == 1:
			return rs[0].ev.Load() != nil, nil
		case len(rs) > 1 || time.Now().After(deadline):
			return false, fmt.Errorf("backend tracks %d relays, want 1", len(rs))
		}
		time.Sleep(10 * time.Millisecond)
	}
}
