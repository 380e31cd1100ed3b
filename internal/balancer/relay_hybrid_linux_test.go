package balancer

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// cutConn is a client's TCP connection that, once cut, sends only the
// first bytes of each write (reporting it all written): the TLS record
// the proxy then receives never completes.
type cutConn struct {
	net.Conn
	cut atomic.Bool
}

func (c *cutConn) Write(b []byte) (int, error) {
	if c.cut.Load() && len(b) > 10 {
		if _, err := c.Conn.Write(b[:10]); err != nil {
			return 0, err
		}
		return len(b), nil
	}
	return c.Conn.Write(b)
}

// Clients that send half a TLS record each block the hybrid relay's worker
// that reads them, waiting for the rest; more of them than the workers
// started at once (hyRunning) must not hold up another client's echo: the
// watchdog starts workers past the stalled ones.
func TestHybridStalledWorkers(t *testing.T) {
	url, d, _ := newTestProxyTLS(t, 1, true)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stalls := 3 * int(hyRunning)
	for range stalls {
		var cc *cutConn
		sd := *d
		sd.NetDialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			cc = &cutConn{Conn: c}
			return cc, nil
		}
		c, _, err := sd.DialContext(ctx, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		cc.cut.Store(true)
		if err := c.WriteMessage(websocket.BinaryMessage, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // every stalled read under way
	c, _, err := d.DialContext(ctx, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("through")); err != nil {
		t.Fatal(err)
	}
	if _, got, err := c.ReadMessage(); err != nil || string(got) != "through" {
		t.Fatalf("echo past %d stalled clients: %q, %v", stalls, got, err)
	}
	t.Logf("echo past %d stalled clients in %v (workers %d)", stalls, time.Since(start).Round(time.Millisecond), hyLive.Load())
}
