package harness

import (
	"context"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/gorilla/websocket"
)

// Admin sends a request to Caddy's admin endpoint and returns the status
// and body.
func (c *Caddy) Admin(method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, c.adminURL(path), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// Done is closed when the Caddy process has exited.
func (c *Caddy) Done() <-chan struct{} { return c.proc.Done() }

// DialFrom opens a client connection from the loopback source address src
// (any 127.x.y.z works on Linux), so tests can play several client IPs.
func DialFrom(ctx context.Context, src, url string, h http.Header) (*websocket.Conn, *http.Response, error) {
	nd := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
	d := *Dialer
	d.NetDialContext = nd.DialContext
	c, resp, err := d.DialContext(ctx, url, h)
	if err == nil {
		c.SetReadLimit(64 << 20)
	}
	return c, resp, err
}
