package harness

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func copyBuf(w io.Writer, r io.Reader) (int64, error) {
	b := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(b)
	return io.CopyBuffer(w, r, *b)
}

// Dialer is the client dialer tests use: bounded handshake, large enough
// read limit for the relaying tests. It does not verify server
// certificates: the TLS sites of StartCaddyTLS use Caddy's internal CA,
// which the tests do not install.
var Dialer = &websocket.Dialer{
	HandshakeTimeout: 5 * time.Second, ReadBufferSize: 4096, WriteBufferSize: 4096,
	TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
}

// Dial opens a client connection.
func Dial(ctx context.Context, url string, h http.Header) (*websocket.Conn, *http.Response, error) {
	c, resp, err := Dialer.DialContext(ctx, url, h)
	if err == nil {
		c.SetReadLimit(64 << 20)
	}
	return c, resp, err
}

// Echo sends msg and waits for it back, within timeout.
func Echo(c *websocket.Conn, msg string, timeout time.Duration) error {
	c.SetWriteDeadline(time.Now().Add(timeout))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(timeout))
	_, got, err := c.ReadMessage()
	if err != nil {
		return fmt.Errorf("reading echo: %w", err)
	}
	if string(got) != msg {
		return fmt.Errorf("echo mismatch: sent %q, got %q", msg, got)
	}
	c.SetReadDeadline(time.Time{})
	return nil
}
