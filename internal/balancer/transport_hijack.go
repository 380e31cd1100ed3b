package balancer

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"
)

// checkUpgrade validates an HTTP/1.1 upgrade request (see admit).
func checkUpgrade(r *http.Request) *Error {
	if r.Method != http.MethodGet {
		return newError(http.StatusMethodNotAllowed, "websocket upgrade must use GET, not %s", r.Method)
	}
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		// RFC 6455 section 4.4: tell the client which version we speak.
		e := newError(http.StatusUpgradeRequired, "unsupported Sec-WebSocket-Version %q", v)
		e.Header = http.Header{"Sec-Websocket-Version": {"13"}}
		return e
	}
	if k := r.Header.Get("Sec-WebSocket-Key"); len(k) != 24 || !strings.HasSuffix(k, "==") {
		return newError(http.StatusBadRequest, "missing or malformed Sec-WebSocket-Key")
	}
	return nil
}

// hijackTransport is an HTTP/1.1 upgrade: the client's connection is
// hijacked from net/http and gets the backend's 101 as the backend wrote
// it. The relay owns the connection from then on; the handler returns at
// once.
type hijackTransport struct {
	r    *http.Request
	opts *ProxyOptions // the clock and the handshake timeout
	// brw is what net/http hands over with the hijacked connection: its
	// reader may hold bytes the client sent after its request, its writer
	// an unused 4 KB buffer.
	brw *bufio.ReadWriter
}

// The client's request goes to the backend as it is.
func (t *hijackTransport) upstreamRequest() *http.Request { return t.r }

func (t *hijackTransport) open(w http.ResponseWriter, u *Upstream, resp *http.Response) (net.Conn, error) {
	client, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, &Error{Status: http.StatusInternalServerError, Err: fmt.Errorf("hijacking client connection: %w", err)}
	}
	// (net/http clears the server's read and write deadlines on hijack:
	// deadlines are the relay's business now.)
	t.brw = brw
	return client, nil
}

// greet writes the 101 and the backend's early bytes to the client in one
// write, then the client's early bytes to the backend, each bounded by the
// handshake timeout.
func (t *hijackTransport) greet(rl *relay, client, backend net.Conn, resp *http.Response, br *bufio.Reader) error {
	now, timeout := t.opts.Now, t.opts.HandshakeTimeout
	// The head goes out through the 4 KB buffer of the bufio.Writer that
	// net/http allocated for the connection and hands over with it, unused
	// otherwise.
	head := append(appendResponseHead(t.brw.Writer.AvailableBuffer(), resp), rl.down.early(br)...)
	putReader(br)
	client.SetWriteDeadline(now().Add(timeout))
	_, err := client.Write(head)
	client.SetWriteDeadline(time.Time{})
	if err == nil {
		if early := rl.up.early(t.brw.Reader); len(early) > 0 {
			backend.SetWriteDeadline(now().Add(timeout))
			_, err = backend.Write(early)
			backend.SetWriteDeadline(time.Time{})
		}
	}
	// On error the 101 may be half-written: nothing more can go to the
	// client.
	return err
}

func (t *hijackTransport) ended() func() { return nil }
func (t *hijackTransport) wait()         {}
