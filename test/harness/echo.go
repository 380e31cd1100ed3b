package harness

import (
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// EchoBackend is a real gorilla/websocket echo server on loopback. It
// records what it saw so tests can check what the balancer forwarded.
type EchoBackend struct {
	Addr string // host:port

	ln   net.Listener
	srv  *http.Server
	live atomic.Int64

	mu       sync.Mutex
	conns    map[*websocket.Conn]struct{}
	requests []*http.Request
	closes   []CloseInfo // close frames received from clients

	// Refuse, when set, makes the backend answer upgrades with this status.
	Refuse atomic.Int32
}

// CloseInfo is a close frame a backend received.
type CloseInfo struct {
	Code int
	Text string
}

// EchoOptions adjusts an EchoBackend.
type EchoOptions struct {
	// Subprotocols the backend accepts, in its order of preference.
	Subprotocols []string
	// Hello is sent to each client first, if set.
	Hello string
	// CloseWith, if set, makes the backend close every connection with
	// this code and reason right after the first message it echoes.
	CloseWith *CloseInfo
	// Addr to listen on; default 127.0.0.1:0.
	Addr string
}

// StartEcho starts an echo backend, stopped by t.Cleanup.
func StartEcho(t testing.TB, opts EchoOptions) *EchoBackend {
	t.Helper()
	addr := opts.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	e := &EchoBackend{Addr: ln.Addr().String(), ln: ln, conns: make(map[*websocket.Conn]struct{})}
	up := websocket.Upgrader{
		CheckOrigin:       func(*http.Request) bool { return true },
		Subprotocols:      opts.Subprotocols,
		EnableCompression: true,
		ReadBufferSize:    4096,
		WriteBufferSize:   4096,
	}
	e.srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.mu.Lock()
		e.requests = append(e.requests, r.Clone(r.Context()))
		e.mu.Unlock()
		if s := e.Refuse.Load(); s != 0 {
			http.Error(w, "refused by backend", int(s))
			return
		}
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		e.serve(c, opts)
	}), ReadHeaderTimeout: 5 * time.Second}
	go e.srv.Serve(ln)
	t.Cleanup(e.Kill)
	return e
}

func (e *EchoBackend) serve(c *websocket.Conn, opts EchoOptions) {
	e.mu.Lock()
	e.conns[c] = struct{}{}
	e.mu.Unlock()
	e.live.Add(1)
	defer func() {
		e.live.Add(-1)
		e.mu.Lock()
		delete(e.conns, c)
		e.mu.Unlock()
		c.Close()
	}()
	c.SetReadLimit(64 << 20)
	c.SetCloseHandler(func(code int, text string) error {
		e.mu.Lock()
		e.closes = append(e.closes, CloseInfo{code, text})
		e.mu.Unlock()
		msg := websocket.FormatCloseMessage(code, text)
		return c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
	})
	if opts.Hello != "" {
		if err := c.WriteMessage(websocket.TextMessage, []byte(opts.Hello)); err != nil {
			return
		}
	}
	for {
		mt, r, err := c.NextReader()
		if err != nil {
			return
		}
		w, err := c.NextWriter(mt)
		if err != nil {
			return
		}
		if _, err := copyBuf(w, r); err != nil {
			return
		}
		if err := w.Close(); err != nil {
			return
		}
		if cw := opts.CloseWith; cw != nil {
			msg := websocket.FormatCloseMessage(cw.Code, cw.Text)
			c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
		}
	}
}

// Live is the number of connections the backend holds.
func (e *EchoBackend) Live() int64 { return e.live.Load() }

// Requests returns the upgrade requests the backend received.
func (e *EchoBackend) Requests() []*http.Request {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]*http.Request(nil), e.requests...)
}

// Closes returns the close frames the backend received.
func (e *EchoBackend) Closes() []CloseInfo {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]CloseInfo(nil), e.closes...)
}

// CloseAll closes every connection with a proper close frame.
func (e *EchoBackend) CloseAll(code int, text string) {
	e.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(e.conns))
	for c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
		c.Close()
	}
}

// Kill stops the backend abruptly, as a crashed process would: the listener
// closes and every connection is reset without a close frame.
func (e *EchoBackend) Kill() {
	e.ln.Close()
	e.srv.Close()
	e.mu.Lock()
	conns := make([]*websocket.Conn, 0, len(e.conns))
	for c := range e.conns {
		conns = append(conns, c)
	}
	e.mu.Unlock()
	for _, c := range conns {
		if tc, ok := c.NetConn().(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.NetConn().Close()
	}
}
