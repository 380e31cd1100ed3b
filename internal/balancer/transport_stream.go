package balancer

import (
	"bufio"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// IsExtendedConnect reports whether r opens a WebSocket over one stream of
// an HTTP/2 connection (RFC 8441) or an HTTP/3 one (RFC 9220): a CONNECT
// with the protocol "websocket". Go's HTTP/2 server accepts these only when
// run with GODEBUG=http2xconnect=1; browsers use them when the server
// offers them.
func IsExtendedConnect(r *http.Request) bool {
	if r.Method != http.MethodConnect {
		return false
	}
	switch r.ProtoMajor {
	case 2:
		return strings.EqualFold(r.Header.Get(":protocol"), "websocket")
	case 3:
		// quic-go's HTTP/3 server puts :protocol in Proto.
		return strings.EqualFold(r.Proto, "websocket")
	}
	return false
}

// websocketGUID is RFC 6455's magic string for Sec-WebSocket-Accept.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

func acceptKey(key string) string {
	h := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// streamTransport is an extended CONNECT: the client's WebSocket is one
// stream of its HTTP/2 or HTTP/3 connection. The backend gets an HTTP/1.1
// upgrade made of it, the client 200 with the backend's choices, and the
// relay reads the request body and writes the response (streamConn).
// Unlike a hijacked connection, the stream lives only as long as the
// handler: wait returns when the relay has ended.
type streamTransport struct {
	r      *http.Request
	up     *http.Request // the upgrade the backend gets
	accept string        // the Sec-WebSocket-Accept the backend must answer
	done   chan struct{} // closed when the relay has ended
}

// newStreamTransport makes the HTTP/1.1 upgrade a backend gets for an
// extended CONNECT: the same target and end-to-end headers, GET, and a
// fresh Sec-WebSocket-Key (the stream has none: RFC 8441 section 5), with
// the Sec-WebSocket-Accept the backend must answer.
func newStreamTransport(r *http.Request) (*streamTransport, *Error) {
	if v := r.Header.Get("Sec-WebSocket-Version"); v != "13" {
		e := newError(http.StatusBadRequest, "unsupported Sec-WebSocket-Version %q", v)
		e.Header = http.Header{"Sec-Websocket-Version": {"13"}}
		return nil, e
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	up := r.Clone(r.Context())
	up.Method = http.MethodGet
	up.Body = http.NoBody
	up.Header.Del(":protocol")
	up.Header.Set("Sec-WebSocket-Key", key)
	return &streamTransport{r: r, up: up, accept: acceptKey(key), done: make(chan struct{})}, nil
}

func (t *streamTransport) upstreamRequest() *http.Request { return t.up }

// open checks the backend's Sec-WebSocket-Accept (the client cannot: it
// sent no key) and answers the client 200 with the backend's headers, not
// 101.
func (t *streamTransport) open(w http.ResponseWriter, u *Upstream, resp *http.Response) (net.Conn, error) {
	if got := resp.Header.Get("Sec-WebSocket-Accept"); got != t.accept {
		return nil, &Error{Status: http.StatusBadGateway, Err: fmt.Errorf("backend %s answered the upgrade with Sec-WebSocket-Accept %q, want %q", u.Addr(), got, t.accept)}
	}
	rc := http.NewResponseController(w)
	h := w.Header()
	connection := resp.Header["Connection"]
	for name, values := range resp.Header {
		if !isHopHeader(connection, name) && name != "Sec-Websocket-Accept" {
			h[name] = values
		}
	}
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return nil, nil // the status line may be out: nothing more can go to the client
	}
	return newStreamConn(t.r, w, rc), nil
}

// greet writes the backend's early bytes to the client; the client's, if
// any, are still in the request body, which the relay reads.
func (t *streamTransport) greet(rl *relay, client, backend net.Conn, resp *http.Response, br *bufio.Reader) error {
	var err error
	if early := rl.down.early(br); len(early) > 0 {
		_, err = client.Write(early)
	}
	putReader(br)
	return err
}

func (t *streamTransport) ended() func() { return func() { close(t.done) } }

func (t *streamTransport) wait() { <-t.done }

// streamConn is the client's side of an extended CONNECT as a net.Conn:
// reads from the request body, writes to the response, flushed.
//
// Writes go through w and the handler chain's writers; deadlines go to the
// innermost writer (net/http's, which serializes them with the stream's own
// work). Wrappers such as Caddy's idle-timeout writer keep deadline state
// that is not safe for concurrent use, and a net.Conn's deadlines are set
// from other goroutines than its writer's (Close cuts a write short).
type streamConn struct {
	body      io.ReadCloser
	w         http.ResponseWriter
	rc        *http.ResponseController // flushes through the chain
	deadlines *http.ResponseController // the innermost writer's
	remote    net.Addr

	mu        sync.Mutex // serializes writes with Close
	closed    bool
	closeOnce sync.Once
}

func newStreamConn(r *http.Request, w http.ResponseWriter, rc *http.ResponseController) *streamConn {
	remote, err := net.ResolveTCPAddr("tcp", r.RemoteAddr)
	if err != nil {
		remote = &net.TCPAddr{}
	}
	inner := w
	for {
		u, ok := inner.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	return &streamConn{body: r.Body, w: w, rc: rc, deadlines: http.NewResponseController(inner), remote: remote}
}

func (c *streamConn) Read(b []byte) (int, error) { return c.body.Read(b) }

func (c *streamConn) Write(b []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	n, err := c.w.Write(b)
	if err == nil {
		err = c.rc.Flush()
	}
	return n, err
}

// Close ends the stream's relay: a write in progress is cut short, none
// follows (the handler returns once the relay has ended, and a response
// must not be written after that), and a read in progress returns.
func (c *streamConn) Close() error {
	c.closeOnce.Do(func() {
		c.deadlines.SetWriteDeadline(aLongTimeAgo)
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.body.Close()
	})
	return nil
}

func (c *streamConn) LocalAddr() net.Addr  { return &net.TCPAddr{} }
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline and SetReadDeadline set only the write deadline: an HTTP/2
// read deadline that passes ends the stream's body for good, so the relay
// never drains a stream with one (see goPipe.readBlocking).
func (c *streamConn) SetDeadline(t time.Time) error      { return c.deadlines.SetWriteDeadline(t) }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return c.deadlines.SetWriteDeadline(t) }
