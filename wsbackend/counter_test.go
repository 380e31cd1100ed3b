package wsbackend

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coder "github.com/coder/websocket"
	"github.com/gorilla/websocket"
)

// gorillaEcho and coderEcho are the two kinds of backend handler Wrap must
// count: each serves one connection until the client goes away.
func gorillaEcho() http.Handler {
	up := websocket.Upgrader{CheckOrigin: func(*http.Request) bool { return true }}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})
}

func coderEcho() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := coder.Accept(w, r, &coder.AcceptOptions{InsecureSkipVerify: true})
		if err != nil {
			return
		}
		defer c.CloseNow()
		ctx := context.Background()
		for {
			mt, msg, err := c.Read(ctx)
			if err != nil {
				return
			}
			if err := c.Write(ctx, mt, msg); err != nil {
				return
			}
		}
	})
}

// wsClient is one client connection, whichever library opened it.
type wsClient interface {
	echo(ctx context.Context) error
	close() error
}

type gorillaClient struct{ c *websocket.Conn }

func (g gorillaClient) echo(ctx context.Context) error {
	if d, ok := ctx.Deadline(); ok {
		g.c.SetReadDeadline(d)
		g.c.SetWriteDeadline(d)
	}
	if err := g.c.WriteMessage(websocket.TextMessage, []byte("ping")); err != nil {
		return err
	}
	_, msg, err := g.c.ReadMessage()
	if err == nil && string(msg) != "ping" {
		err = errors.New("bad echo " + string(msg))
	}
	return err
}

// close drops the TCP connection without a close handshake: the server
// must notice the EOF.
func (g gorillaClient) close() error { return g.c.Close() }

type coderClient struct{ c *coder.Conn }

func (k coderClient) echo(ctx context.Context) error {
	if err := k.c.Write(ctx, coder.MessageText, []byte("ping")); err != nil {
		return err
	}
	_, msg, err := k.c.Read(ctx)
	if err == nil && string(msg) != "ping" {
		err = errors.New("bad echo " + string(msg))
	}
	return err
}

// close runs the full close handshake.
func (k coderClient) close() error { return k.c.Close(coder.StatusNormalClosure, "bye") }

func dialGorilla(ctx context.Context, url string) (wsClient, error) {
	c, _, err := websocket.DefaultDialer.DialContext(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return gorillaClient{c}, nil
}

func dialCoder(ctx context.Context, url string) (wsClient, error) {
	c, _, err := coder.Dial(ctx, url, nil)
	if err != nil {
		return nil, err
	}
	return coderClient{c}, nil
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-tick.C:
		}
	}
}

// TestCounterExactUnderConcurrency opens 1000 connections at once, checks
// the count is exactly 1000 while all are open, closes them all at once and
// checks it returns to exactly 0; then 1000 goroutines churn through
// connect-echo-close three times each. Run it with -race.
func TestCounterExactUnderConcurrency(t *testing.T) {
	t.Parallel()
	const conns = 1000
	tests := []struct {
		name    string
		handler func() http.Handler
		dial    func(context.Context, string) (wsClient, error)
	}{
		{"gorilla server, gorilla client", gorillaEcho, dialGorilla},
		{"gorilla server, coder client", gorillaEcho, dialCoder},
		{"coder server, coder client", coderEcho, dialCoder},
		{"coder server, gorilla client", coderEcho, dialGorilla},
	}
	// The cases run one after the other: each holds 2000 sockets and keeps
	// the CPUs busy, and timing tests run alongside.
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()

			var c Counter
			var minSeen, maxSeen atomic.Int64
			remove := c.OnChange(func(n int64) {
				for m := maxSeen.Load(); n > m && !maxSeen.CompareAndSwap(m, n); m = maxSeen.Load() {
				}
				for m := minSeen.Load(); n < m && !minSeen.CompareAndSwap(m, n); m = minSeen.Load() {
				}
			})
			defer remove()
			srv := httptest.NewServer(c.Wrap(tt.handler()))
			defer srv.Close()
			url := "ws" + strings.TrimPrefix(srv.URL, "http")

			// Phase 1: all connect at once, all echo (so every server side
			// has hijacked), then all close at once.
			clients := make([]wsClient, conns)
			var wg sync.WaitGroup
			errs := make(chan error, conns)
			for i := range clients {
				wg.Go(func() {
					cl, err := tt.dial(ctx, url)
					if err == nil {
						err = cl.echo(ctx)
					}
					clients[i] = cl
					if err != nil {
						errs <- err
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("connecting: %v", err)
			}
			if got := c.Live(); got != conns {
				t.Fatalf("Live() with %d connections open = %d", conns, got)
			}
			if maxSeen.Load() != conns {
				t.Errorf("highest count seen while connecting = %d, want %d", maxSeen.Load(), conns)
			}
			for _, cl := range clients {
				wg.Go(func() { cl.close() })
			}
			wg.Wait()
			waitFor(ctx, t, "count back to 0", func() bool { return c.Live() == 0 })

			// Phase 2: churn. Connects and disconnects overlap freely.
			const rounds = 3
			errs = make(chan error, conns)
			for range conns {
				wg.Go(func() {
					for range rounds {
						cl, err := tt.dial(ctx, url)
						if err == nil {
							err = cl.echo(ctx)
							cl.close()
						}
						if err != nil {
							errs <- err
							return
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("churning: %v", err)
			}
			waitFor(ctx, t, "count back to 0 after churn", func() bool { return c.Live() == 0 })

			// Give late closes a moment to show up as an overshoot.
			time.Sleep(50 * time.Millisecond)
			if got := c.Live(); got != 0 {
				t.Errorf("Live() after all closed = %d, want 0", got)
			}
			if got, want := c.Total(), uint64(conns*(1+rounds)); got != want {
				t.Errorf("Total() = %d, want %d", got, want)
			}
			if minSeen.Load() < 0 {
				t.Errorf("count went negative: %d", minSeen.Load())
			}
		})
	}
}

// TestCounterCountsNothingWithoutHijack covers requests and handlers that
// never take the connection over.
func TestCounterCountsNothingWithoutHijack(t *testing.T) {
	t.Parallel()
	upgrade := func(r *http.Request) *http.Request {
		r.Header.Set("Connection", "Upgrade")
		r.Header.Set("Upgrade", "websocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		return r
	}
	tests := []struct {
		name    string
		req     *http.Request
		handler http.HandlerFunc
		status  int
	}{
		{
			name:    "plain request",
			req:     httptest.NewRequest(http.MethodGet, "/", nil),
			handler: func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) },
			status:  http.StatusNoContent,
		},
		{
			name: "upgrade refused",
			req:  upgrade(httptest.NewRequest(http.MethodGet, "/", nil)),
			handler: func(w http.ResponseWriter, r *http.Request) {
				http.Error(w, "no", http.StatusForbidden)
			},
			status: http.StatusForbidden,
		},
		{
			name: "hijack fails (writer cannot hijack)",
			req:  upgrade(httptest.NewRequest(http.MethodGet, "/", nil)),
			handler: func(w http.ResponseWriter, r *http.Request) {
				if _, _, err := w.(http.Hijacker).Hijack(); err == nil {
					t.Error("hijacking a ResponseRecorder succeeded")
				}
				w.WriteHeader(http.StatusInternalServerError)
			},
			status: http.StatusInternalServerError,
		},
		{
			name:    "gorilla refuses a bad handshake",
			req:     httptest.NewRequest(http.MethodGet, "/", nil),
			handler: gorillaEcho().ServeHTTP,
			status:  http.StatusBadRequest,
		},
		{
			// coder writes 101 before hijacking; the recorder keeps it.
			name:    "coder has nothing to hijack",
			req:     upgrade(httptest.NewRequest(http.MethodGet, "/", nil)),
			handler: coderEcho().ServeHTTP,
			status:  http.StatusSwitchingProtocols,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var c Counter
			rec := httptest.NewRecorder()
			c.Wrap(tt.handler).ServeHTTP(rec, tt.req)
			if rec.Code != tt.status {
				t.Errorf("status = %d, want %d", rec.Code, tt.status)
			}
			if c.Live() != 0 || c.Total() != 0 {
				t.Errorf("Live() = %d, Total() = %d, want 0, 0", c.Live(), c.Total())
			}
		})
	}
}

// TestCounterWriterInterfaces checks that the wrapped writer keeps what
// handlers rely on.
func TestCounterWriterInterfaces(t *testing.T) {
	t.Parallel()
	var c Counter
	var sawFlusher, sawUnwrap, flushed bool
	h := c.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, sawFlusher = w.(http.Flusher)
		u, ok := w.(interface{ Unwrap() http.ResponseWriter })
		sawUnwrap = ok && u.Unwrap() != nil
		flushed = http.NewResponseController(w).Flush() == nil
	}))
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("Connection", "upgrade")
	req.Header.Set("Upgrade", "websocket")
	h.ServeHTTP(httptest.NewRecorder(), req)
	if !sawFlusher || !sawUnwrap || !flushed {
		t.Errorf("Flusher %v, Unwrap %v, flush through ResponseController %v; want all true", sawFlusher, sawUnwrap, flushed)
	}
}

// TestCounterConnLifetime covers a connection handed to a goroutine after the
// handler returns, a double Close, and deadlines set through the
// ResponseController (which must unwrap to the server's writer).
func TestCounterConnLifetime(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var c Counter
	release := make(chan struct{})
	returned := make(chan struct{}) // closed once the wrapped handler has returned
	up := websocket.Upgrader{}
	wrapped := c.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(time.Minute)); err != nil {
			t.Errorf("SetReadDeadline through the wrapper: %v", err)
		}
		conn, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		go func() { // the hub pattern: serve after the handler returned
			<-release
			conn.Close()
			conn.Close()
			conn.NetConn().Close()
		}()
	}))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer close(returned)
		wrapped.ServeHTTP(w, r)
	}))
	defer srv.Close()

	cl, _, err := websocket.DefaultDialer.DialContext(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	select {
	case <-returned:
	case <-ctx.Done():
		t.Fatal("the handler did not return")
	}
	if got := c.Live(); got != 1 {
		t.Fatalf("Live() after the handler returned, connection open = %d, want 1", got)
	}
	close(release)
	waitFor(ctx, t, "count back to 0", func() bool { return c.Live() == 0 })
	time.Sleep(20 * time.Millisecond)
	if got := c.Live(); got != 0 {
		t.Fatalf("Live() after three closes = %d, want 0", got)
	}
}

func TestCounterOnChange(t *testing.T) {
	t.Parallel()
	var c Counter
	var a, b []int64
	removeA := c.OnChange(func(n int64) { a = append(a, n) })
	removeB := c.OnChange(func(n int64) { b = append(b, n) })
	c.Add(1)
	c.Add(2)
	removeA()
	removeA() // a second remove is harmless
	c.Add(-3)
	removeB()
	c.Add(5)
	if want := []int64{1, 3}; !equalInts(a, want) {
		t.Errorf("first hook saw %v, want %v", a, want)
	}
	if want := []int64{1, 3, 0}; !equalInts(b, want) {
		t.Errorf("second hook saw %v, want %v", b, want)
	}
	if c.Live() != 5 || c.Total() != 8 {
		t.Errorf("Live() = %d, Total() = %d, want 5, 8", c.Live(), c.Total())
	}
}

func equalInts(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
