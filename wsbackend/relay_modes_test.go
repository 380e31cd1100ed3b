package wsbackend

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// Both relays (the event loop for plain TCP, the goroutine pair for TLS and
// where the loop is off) move large messages both ways, close cleanly and
// leave the counts at zero.
func TestRelayModes(t *testing.T) {
	for _, loop := range []bool{true, false} {
		name := "goroutines"
		if loop {
			name = "event loop"
		}
		t.Run(name, func(t *testing.T) {
			SetEventLoop(loop)
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
