package consultest

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// TestDoubleHeader is set on every response so that nobody mistakes this
// server for a real Consul agent.
const TestDoubleHeader = "X-Consul-Test-Double"

// TestDoubleNotice is the value of TestDoubleHeader and the text printed by
// the standalone agent.
const TestDoubleNotice = "consultest: a Consul-compatible TEST DOUBLE, not Consul; for tests and local demos only"

// Defaults taken from Consul's agent configuration.
const (
	defaultCheckUpdateInterval = 5 * time.Minute // check_update_interval
	defaultReapInterval        = 30 * time.Second
	defaultMinDeregisterAfter  = time.Minute // the floor on deregister_critical_service_after
	defaultDatacenter          = "dc1"
	defaultNodeName            = "testnode"

	// fakeClockPoll bounds how long the timer loop sleeps when Options.Now is
	// injected: a test moving its clock forward has no way to wake the loop,
	// so the loop looks again at least this often.
	fakeClockPoll = 10 * time.Millisecond
)

// Options configures an Agent. The zero value behaves like `consul agent
// -dev` with ACLs disabled.
type Options struct {
	// ACLToken, when set, turns ACLs on with default policy "deny" and makes
	// this the one management token. Requests carry it in the X-Consul-Token
	// header, an "Authorization: Bearer" header or ?token=. Any other token
	// gets 403 "ACL not found". No token at all means Consul's anonymous
	// token: its writes get 403 "Permission denied: anonymous token lacks
	// permission ..." and its reads of lists succeed with the results
	// filtered away (200, empty, X-Consul-Results-Filtered-By-ACLs: true),
	// as on a real default-deny cluster. /v1/status/leader needs no token.
	ACLToken string

	// CheckUpdateInterval is the agent's check_update_interval: a check update
	// that changes only the output is kept by the agent and synced to the
	// catalog (/v1/health) d/2 plus a random part of d later, d being this
	// interval; status changes sync at once. 0 means Consul's default of 5m.
	// A negative value syncs every update at once, like "0s" in Consul.
	CheckUpdateInterval time.Duration

	// ReapInterval is how often services whose check has been critical for
	// longer than its DeregisterCriticalServiceAfter are removed. 0 means
	// Consul's 30s.
	ReapInterval time.Duration

	// MinDeregisterCriticalAfter is the floor Consul puts on a check's
	// DeregisterCriticalServiceAfter. 0 means Consul's 1m; tests lower it.
	MinDeregisterCriticalAfter time.Duration

	// Now is the clock used for TTLs, deferred syncs and reaping. Nil means
	// time.Now. With an injected clock the timers are re-evaluated every
	// 10ms of real time.
	Now func() time.Time

	// Datacenter and NodeName default to "dc1" and "testnode".
	Datacenter, NodeName string

	// Logger receives the agent's log; nil discards it.
	Logger *zap.Logger
}

func (o Options) withDefaults() Options {
	if o.CheckUpdateInterval == 0 {
		o.CheckUpdateInterval = defaultCheckUpdateInterval
	}
	if o.ReapInterval <= 0 {
		o.ReapInterval = defaultReapInterval
	}
	if o.MinDeregisterCriticalAfter <= 0 {
		o.MinDeregisterCriticalAfter = defaultMinDeregisterAfter
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Datacenter == "" {
		o.Datacenter = defaultDatacenter
	}
	if o.NodeName == "" {
		o.NodeName = defaultNodeName
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return o
}

// ErrClosed is returned when starting an Agent that has been closed.
var ErrClosed = errors.New("consultest: agent closed")

// Agent is a Consul-compatible test agent. Create it with New, serve it with
// Start (or mount Handler yourself) and always Close it.
type Agent struct {
	opts   Options
	logger *zap.Logger
	routes []route
	// injectedClock makes the timer loop poll Options.Now (see fakeClockPoll).
	injectedClock bool

	mu      sync.Mutex // guards local, cat, nextReap and changed
	local   localState
	cat     catalog
	changed chan struct{} // closed and replaced whenever the catalog changes
	// nextReap is when the reaper runs next; zero until the timer loop starts.
	nextReap time.Time

	writes     atomic.Int64
	requestsMu sync.Mutex
	requests   map[string]int64 // by URL path

	quit     chan struct{}  // closed by Close
	kick     chan struct{}  // wakes the timer loop after a state change
	bg       sync.WaitGroup // the timer loop and the Serve goroutines
	inflight sync.WaitGroup // requests being handled; Add under lifeMu

	lifeMu  sync.Mutex // guards the fields below
	addr    string
	srv     *http.Server
	served  chan struct{} // closed when srv.Serve has returned
	closed  bool
	looping bool
}

// New returns an Agent holding the state a fresh `consul agent -dev` has: its
// node with a passing serfHealth check and the "consul" service. It is not
// listening yet.
func New(opts Options) *Agent {
	injectedClock := opts.Now != nil
	opts = opts.withDefaults()
	a := &Agent{
		opts:          opts,
		logger:        opts.Logger,
		injectedClock: injectedClock,
		local:         newLocalState(),
		cat:           newCatalog(opts.Datacenter, opts.NodeName),
		changed:       make(chan struct{}),
		requests:      make(map[string]int64),
		quit:          make(chan struct{}),
		kick:          make(chan struct{}, 1),
	}
	a.routes = a.routeTable()
	return a
}

// Start listens on listenAddr (for example "127.0.0.1:0") and serves the API
// in the background.
func (a *Agent) Start(listenAddr string) error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if a.closed {
		return ErrClosed
	}
	if a.addr != "" {
		return fmt.Errorf("consultest: agent already started on %s", a.addr)
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", listenAddr, err)
	}
	a.addr = ln.Addr().String()
	a.startLoopLocked()
	a.serveLocked(ln)
	a.logger.Warn(TestDoubleNotice, zap.String("addr", a.addr))
	return nil
}

// Addr returns the host:port the agent listens on, or "" before Start.
func (a *Agent) Addr() string {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	return a.addr
}

// Stop takes the HTTP listener down, as if the agent had become unreachable:
// open connections, blocking queries included, are cut and new ones are
// refused. The agent itself keeps running: its state is kept, TTLs keep
// expiring and the reaper keeps reaping, as they would on a real agent that
// clients cannot reach. Restart brings the listener back.
func (a *Agent) Stop() error {
	a.lifeMu.Lock()
	served, err := a.closeServerLocked()
	a.lifeMu.Unlock()
	if served != nil {
		<-served
	}
	return err
}

// closeServerLocked closes the listener and its connections, which cancels
// the requests in flight, and returns the channel closed when Serve returns.
func (a *Agent) closeServerLocked() (<-chan struct{}, error) {
	srv, served := a.srv, a.served
	a.srv, a.served = nil, nil
	if srv == nil {
		return nil, nil
	}
	if err := srv.Close(); err != nil {
		return served, fmt.Errorf("closing HTTP server: %w", err)
	}
	return served, nil
}

// Restart listens again on the address Start got, after Stop.
func (a *Agent) Restart() error {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	switch {
	case a.closed:
		return ErrClosed
	case a.addr == "":
		return errors.New("consultest: restarting an agent that was never started")
	case a.srv != nil:
		return fmt.Errorf("consultest: agent already serving on %s", a.addr)
	}
	ln, err := net.Listen("tcp", a.addr)
	if err != nil {
		return fmt.Errorf("listening again on %s: %w", a.addr, err)
	}
	a.serveLocked(ln)
	return nil
}

// Close stops listening, ends blocking queries and stops the agent's timers,
// and returns once every goroutine the agent started has finished.
func (a *Agent) Close() error {
	a.lifeMu.Lock()
	if a.closed {
		a.lifeMu.Unlock()
		return nil
	}
	a.closed = true
	_, err := a.closeServerLocked()
	close(a.quit)
	a.lifeMu.Unlock()

	a.bg.Wait()
	a.inflight.Wait()
	return err
}

// Handler returns the agent's HTTP API, for mounting on a server of your own
// (httptest.NewServer). The agent's timers start with the first call.
func (a *Agent) Handler() http.Handler {
	a.lifeMu.Lock()
	if !a.closed {
		a.startLoopLocked()
	}
	a.lifeMu.Unlock()
	return http.HandlerFunc(a.serveHTTP)
}

// Requests returns how many requests arrived whose URL path starts with
// prefix, for example "/v1/health/service/". Tests use it to catch hot loops.
func (a *Agent) Requests(prefix string) int64 {
	a.requestsMu.Lock()
	defer a.requestsMu.Unlock()
	var n int64
	for path, count := range a.requests {
		if strings.HasPrefix(path, prefix) {
			n += count
		}
	}
	return n
}

// ServerWrites returns how many writes a real agent would have sent to the
// servers (each one a Raft write): registrations, deregistrations, check
// status changes, maintenance toggles, reaping, and the deferred syncs of
// output-only check updates. Tests use it to bound the write load.
func (a *Agent) ServerWrites() int64 {
	return a.writes.Load()
}

func (a *Agent) serveLocked(ln net.Listener) {
	srv := &http.Server{
		Handler:           http.HandlerFunc(a.serveHTTP),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          zap.NewStdLog(a.logger.Named("http")),
	}
	served := make(chan struct{})
	a.srv, a.served = srv, served
	a.bg.Add(1)
	go func() {
		defer a.bg.Done()
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.logger.Error("serving HTTP", zap.String("addr", ln.Addr().String()), zap.Error(err))
		}
	}()
}

func (a *Agent) startLoopLocked() {
	if a.looping {
		return
	}
	a.looping = true
	a.bg.Add(1)
	go a.loop()
}

// enter registers a request so that Close can wait for it; it fails once the
// agent is closed. Add happens under lifeMu, before Close's Wait.
func (a *Agent) enter() bool {
	a.lifeMu.Lock()
	defer a.lifeMu.Unlock()
	if a.closed {
		return false
	}
	a.inflight.Add(1)
	return true
}

func (a *Agent) countRequest(path string) {
	a.requestsMu.Lock()
	a.requests[path]++
	a.requestsMu.Unlock()
}

func (a *Agent) now() time.Time {
	return a.opts.Now()
}

// kickLoop wakes the timer loop so that it sees new deadlines.
func (a *Agent) kickLoop() {
	select {
	case a.kick <- struct{}{}:
	default:
	}
}

// notifyLocked wakes every blocking query; each re-reads its index.
func (a *Agent) notifyLocked() {
	close(a.changed)
	a.changed = make(chan struct{})
}
