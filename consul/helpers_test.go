package consul

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

// testTimeout bounds every test.
const testTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startAgent starts a test agent on a free loopback port, closed with the
// test, and returns it with a client that has its own transport.
func startAgent(t *testing.T, opts consultest.Options) (*consultest.Agent, *api.Client) {
	t.Helper()
	a, _ := consultest.StartTest(t, opts)
	// The client goes through this package's Config, as the watcher's does.
	return a, newClient(t, Config{Address: a.Addr(), Token: opts.ACLToken})
}

// newClient returns a client for cfg with a transport of its own, whose idle
// connections are closed with the test.
func newClient(t *testing.T, cfg Config) *api.Client {
	t.Helper()
	ac := cfg.APIConfig()
	transport := &http.Transport{}
	t.Cleanup(transport.CloseIdleConnections)
	ac.Transport = transport
	c, err := api.NewClient(ac)
	if err != nil {
		t.Fatalf("creating client: %v", err)
	}
	return c
}

// fastOptions are watcher options for tests: backoff in tens of
// milliseconds, logs observed.
func fastOptions() (*WatchOptions, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return &WatchOptions{
		Logger:       zap.New(core),
		StartTimeout: 5 * time.Second,
		BackoffBase:  50 * time.Millisecond,
		BackoffMax:   400 * time.Millisecond,
	}, logs
}

// newWatcher returns a started watcher of service "echo" at addr, stopped
// with the test.
func newWatcher(t *testing.T, cfg Config, opts *WatchOptions) *Watcher {
	t.Helper()
	if cfg.Service == "" {
		cfg.Service = "echo"
	}
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 5 * time.Second
	}
	w := NewWatcher(newClient(t, cfg), cfg, opts)
	t.Cleanup(w.Stop)
	return w
}

// instance describes a registration for the test agent.
type instance struct {
	id     string
	port   int
	meta   map[string]string
	status string // initial check status; default passing
	ttl    string // default 30s
	tags   []string
}

func register(ctx context.Context, t *testing.T, c *api.Client, in instance) {
	t.Helper()
	if in.status == "" {
		in.status = api.HealthPassing
	}
	if in.ttl == "" {
		in.ttl = "30s"
	}
	reg := &api.AgentServiceRegistration{
		ID:      in.id,
		Name:    "echo",
		Address: "127.0.0.1",
		Port:    in.port,
		Tags:    in.tags,
		Meta:    in.meta,
		Check:   &api.AgentServiceCheck{CheckID: "ttl:" + in.id, TTL: in.ttl, Status: in.status},
	}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("registering %s: %v", in.id, err)
	}
}

func addrOf(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// ids lists the IDs of a set.
func ids(set []Instance) []string {
	out := make([]string, len(set))
	for i, in := range set {
		out[i] = in.ID
	}
	return out
}

// eventually polls cond every 5ms until it holds or d passes, and returns
// how long it took.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("after %s: still waiting until %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(start)
}

// countingStore is a BackendStore that records references.
type countingStore struct {
	inner wsbackend.BackendStore
	mu    sync.Mutex
	refs  map[string]int
}

func newCountingStore() *countingStore {
	return &countingStore{inner: wsbackend.NewBackendStore(), refs: make(map[string]int)}
}

func (s *countingStore) Acquire(addr string) *wsbackend.Backend {
	s.mu.Lock()
	s.refs[addr]++
	s.mu.Unlock()
	return s.inner.Acquire(addr)
}

func (s *countingStore) Release(addr string) {
	s.mu.Lock()
	s.refs[addr]--
	s.mu.Unlock()
	s.inner.Release(addr)
}

func (s *countingStore) held() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int)
	for k, v := range s.refs {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}
