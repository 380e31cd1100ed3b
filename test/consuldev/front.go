package consuldev

import (
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// Front is a small HTTP proxy before a real agent, for what the agent itself
// cannot do: count the requests a client sends per path, and fail on
// demand (connections reset as if the agent were down, or held unanswered).
// Everything it forwards is answered by the real agent.
type Front struct {
	ln  net.Listener
	srv *http.Server

	mu       sync.Mutex
	fault    Fault
	status   int // what Fail answers
	requests map[string]int64
	conns    map[net.Conn]struct{}
	release  chan struct{} // closed when a stall ends
}

// Fault is what a Front does with requests.
type Fault int

const (
	// Pass forwards every request to the agent.
	Pass Fault = iota
	// Reset closes every connection at once, as a stopped agent's host would.
	Reset
	// Stall accepts connections and answers nothing until the fault changes.
	Stall
	// Fail answers every request with the status given to FailWith, as an
	// agent that is up but failing would (a 500 without a leader, a 503
	// when rate limited).
	Fail
)

// FailWith makes the Front answer every request with status.
func (f *Front) FailWith(status int) {
	f.SetFault(Fail)
	f.mu.Lock()
	f.status = status
	f.mu.Unlock()
}

// NewFront starts a Front for the agent at target (host:port), closed with
// the test.
func NewFront(tb testing.TB, target string) *Front {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listening for the consul front: %v", err)
	}
	f := &Front{ln: ln, requests: make(map[string]int64), conns: make(map[net.Conn]struct{}), release: make(chan struct{})}
	proxy := httputil.NewSingleHostReverseProxy(&url.URL{Scheme: "http", Host: target})
	proxy.FlushInterval = -1
	// An agent that is down (stopped for an outage test) is passed on as
	// down: the client's connection closes unanswered. httputil's default
	// would answer 502, which no agent sends, and which a client rightly
	// takes for a Consul that is up but failing.
	proxy.ErrorHandler = func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) }
	f.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if f.hold(w, r) {
				return
			}
			proxy.ServeHTTP(w, r)
		}),
		ConnState: f.track,
	}
	go f.srv.Serve(ln)
	tb.Cleanup(func() {
		f.SetFault(Pass)
		f.srv.Close()
	})
	return f
}

// Addr is the Front's address, host:port: give it to clients instead of the
// agent's.
func (f *Front) Addr() string { return f.ln.Addr().String() }

// SetFault changes what the Front does from now on. Reset also closes the
// connections already open.
func (f *Front) SetFault(fault Fault) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fault == Stall && fault != Stall {
		close(f.release)
		f.release = make(chan struct{})
	}
	f.fault = fault
	if fault == Reset {
		for c := range f.conns {
			c.Close()
		}
	}
}

// Requests counts the requests whose path starts with prefix that reached
// the Front (answered or not).
func (f *Front) Requests(prefix string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for p, c := range f.requests {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

// hold counts r and applies the fault; it reports whether r was dealt with.
func (f *Front) hold(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	f.requests[r.URL.Path]++
	fault, release, status := f.fault, f.release, f.status
	f.mu.Unlock()
	switch fault {
	case Fail:
		http.Error(w, "consuldev front: injected failure", status)
		return true
	case Reset:
		panic(http.ErrAbortHandler) // net/http closes the connection unanswered
	case Stall:
		select {
		case <-release:
		case <-r.Context().Done():
		}
		panic(http.ErrAbortHandler)
	}
	return false
}

// track keeps the open connections, so that Reset can close them, and
// closes new ones at once while Reset holds.
func (f *Front) track(c net.Conn, state http.ConnState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch state {
	case http.StateNew:
		if f.fault == Reset {
			c.Close()
			return
		}
		f.conns[c] = struct{}{}
	case http.StateClosed, http.StateHijacked:
		delete(f.conns, c)
	}
}
