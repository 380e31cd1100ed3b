package consul

import (
	"context"
	"maps"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
)

// testTimeout bounds every test.
const testTimeout = 30 * time.Second

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func TestMain(m *testing.M) { os.Exit(consuldev.Main(m)) }

// sharedAgent returns the package's shared Consul agent, a management
// client for it, and a service name of the test's own, which keeps tests
// sharing the agent apart.
func sharedAgent(t *testing.T) (*consuldev.Agent, *api.Client, string) {
	t.Helper()
	a := consuldev.Shared(t)
	return a, newClient(t, Config{Address: a.Addr()}), serviceName(t)
}

// ownAgent starts a Consul agent for one test, for tests that stop it or
// need ACLs, and returns it with a management client.
func ownAgent(t *testing.T, opts consuldev.Options) (*consuldev.Agent, *api.Client) {
	t.Helper()
	a := consuldev.Start(t, opts)
	token := ""
	if opts.ACL {
		token = consuldev.ManagementToken
	}
	// The client goes through this package's Config, as the watcher's does.
	return a, newClient(t, Config{Address: a.Addr(), Token: token})
}

// serviceName derives a Consul service name from the test's name.
func serviceName(t *testing.T) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, t.Name())
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

// newWatcher returns a watcher for cfg, stopped with the test.
func newWatcher(t *testing.T, cfg Config, opts *WatchOptions) *Watcher {
	t.Helper()
	if cfg.WaitTime == 0 {
		cfg.WaitTime = 5 * time.Second
	}
	w := NewWatcher(newClient(t, cfg), cfg, opts)
	t.Cleanup(w.Stop)
	return w
}

// instance describes a registration.
type instance struct {
	service string
	id      string
	port    int
	meta    map[string]string
	status  string // initial check status; default passing
	ttl     string // default 30s
	tags    []string
}

// register registers in through the agent and waits until the catalog
// shows it: the agent syncs registrations to the catalog asynchronously, so
// a read right after the write could miss it.
func register(ctx context.Context, t *testing.T, c *api.Client, in instance) {
	t.Helper()
	if in.status == "" {
		in.status = api.HealthPassing
	}
	if in.ttl == "" {
		in.ttl = "30s"
	}
	id := in.service + "-" + in.id // IDs are per agent, and tests share it
	reg := &api.AgentServiceRegistration{
		ID:      id,
		Name:    in.service,
		Address: "127.0.0.1",
		Port:    in.port,
		Tags:    in.tags,
		Meta:    in.meta,
		Check:   &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: in.ttl, Status: in.status},
	}
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("registering %s: %v", id, err)
	}
	for {
		entries, _, err := c.Health().Service(in.service, "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			t.Fatalf("reading %s back: %v", id, err)
		}
		for _, e := range entries {
			if e.Service.ID == id && maps.Equal(e.Service.Meta, in.meta) {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s not in the catalog: %v", id, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func addrOf(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }

// ids lists the IDs of a set as register was given them, without the
// service prefix.
func ids(set []Instance) []string {
	out := make([]string, len(set))
	for i, in := range set {
		out[i] = in.ID[strings.LastIndex(in.ID, "-")+1:]
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
	inner balancer.BackendStore
	mu    sync.Mutex
	refs  map[string]int
}

func newCountingStore() *countingStore {
	return &countingStore{inner: balancer.NewBackendStore(), refs: make(map[string]int)}
}

func (s *countingStore) Acquire(addr string) *balancer.Backend {
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
