package wsbackend

import (
	"bufio"
	"net"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// Counter counts the live WebSocket connections of a backend: the number a
// backend reports to balancers (see Register and Reporter). Wrap the
// backend's WebSocket handler with it; it works with any library that takes
// the connection over through http.Hijacker or http.ResponseController,
// gorilla/websocket and coder/websocket included.
//
// The zero value is ready to use. A Counter must not be copied after first
// use.
type Counter struct {
	live  atomic.Int64
	total atomic.Uint64

	hooksMu sync.Mutex // serializes changes to hooks
	hooks   atomic.Pointer[[]*counterHook]
}

type counterHook struct{ f func(live int64) }

// Live is the number of connections open now.
func (c *Counter) Live() int64 { return c.live.Load() }

// Total is the number of connections counted since the Counter was created.
func (c *Counter) Total() uint64 { return c.total.Load() }

// Add adjusts the count by delta and returns the new count, for connections
// that Wrap does not see (a server that does not use net/http, or one that
// serves WebSockets over HTTP/2). Every +1 must be matched by exactly one -1.
func (c *Counter) Add(delta int64) int64 {
	if delta > 0 {
		c.total.Add(uint64(delta))
	}
	n := c.live.Add(delta)
	if hs := c.hooks.Load(); hs != nil {
		for _, h := range *hs {
			h.f(n)
		}
	}
	return n
}

// OnChange calls f with the new count after every change, synchronously, on
// the goroutine that opened or closed the connection: f must be cheap and
// must not block (an atomic compare and a non-blocking channel send at
// most). Calls from different goroutines may run concurrently and arrive out
// of order, so f should treat its argument as a hint and read Live when it
// acts. remove unregisters f; it is safe to call more than once.
func (c *Counter) OnChange(f func(live int64)) (remove func()) {
	h := &counterHook{f: f}
	c.hooksMu.Lock()
	defer c.hooksMu.Unlock()
	var hs []*counterHook
	if old := c.hooks.Load(); old != nil {
		hs = append(hs, *old...)
	}
	hs = append(hs, h)
	c.hooks.Store(&hs)
	return func() { c.removeHook(h) }
}

func (c *Counter) removeHook(h *counterHook) {
	c.hooksMu.Lock()
	defer c.hooksMu.Unlock()
	old := c.hooks.Load()
	if old == nil {
		return
	}
	hs := make([]*counterHook, 0, len(*old))
	for _, o := range *old {
		if o != h {
			hs = append(hs, o)
		}
	}
	c.hooks.Store(&hs)
}

// Wrap returns a handler that counts the WebSocket connections h accepts.
// A connection counts from the moment h takes it over (the hijack that every
// WebSocket library performs to answer 101 Switching Protocols) until the
// taken-over net.Conn is closed, by whoever closes it, exactly once. That
// fits handlers that serve a connection until they return and handlers that
// hand it to goroutines and return at once (gorilla's hub pattern).
//
// Only WebSocket upgrade requests (see protocol.IsUpgrade) are counted: other requests
// reach h untouched, and a handler that refuses an upgrade without hijacking
// counts nothing. A connection h never closes stays counted, as it stays
// open. Over HTTP/2 (RFC 8441) nothing is hijacked; count with Add.
//
// The http.ResponseWriter h sees still implements http.Hijacker and
// http.Flusher and unwraps (for http.ResponseController) to the original.
func (c *Counter) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !protocol.IsUpgrade(r) {
			h.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(&countingWriter{ResponseWriter: w, c: c}, r)
	})
}

// countingWriter counts a successful hijack.
type countingWriter struct {
	http.ResponseWriter
	c *Counter
}

// Hijack takes the connection over through the wrapped writer (or whatever
// it unwraps to) and counts it; the returned net.Conn uncounts it on Close.
func (w *countingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, brw, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err != nil {
		return conn, brw, err
	}
	w.c.Add(1)
	return &countedConn{Conn: conn, c: w.c}, brw, nil
}

// Flush implements http.Flusher; flushing is a no-op where the wrapped
// writer cannot flush.
func (w *countingWriter) Flush() { _ = w.FlushError() }

// FlushError flushes and reports the error, for http.ResponseController.
func (w *countingWriter) FlushError() error {
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *countingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// countedConn uncounts its connection on the first Close.
type countedConn struct {
	net.Conn
	c      *Counter
	closed atomic.Bool
}

// Close closes the connection and, the first time, uncounts it.
func (cc *countedConn) Close() error {
	err := cc.Conn.Close()
	if cc.closed.CompareAndSwap(false, true) {
		cc.c.Add(-1)
	}
	return err
}

// NetConn returns the underlying connection, as tls.Conn.NetConn does.
func (cc *countedConn) NetConn() net.Conn { return cc.Conn }

// Interface guards
var (
	_ http.Hijacker = (*countingWriter)(nil)
	_ http.Flusher  = (*countingWriter)(nil)
)
