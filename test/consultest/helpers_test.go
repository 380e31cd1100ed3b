package consultest_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// testTimeout bounds every test; the timers the tests set are well under a
// second or two.
const testTimeout = 10 * time.Second

// testContext returns a context that ends with the test or after testTimeout.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// startAgent starts an agent on a free loopback port, closed with the test,
// and returns it with a client carrying opts.ACLToken.
func startAgent(t *testing.T, opts consultest.Options) (*consultest.Agent, *api.Client) {
	t.Helper()
	return consultest.StartTest(t, opts)
}

// newClient returns a consul/api client for addr with its own transport, so
// that tests do not share connections.
func newClient(t *testing.T, addr, token string) *api.Client {
	t.Helper()
	return consultest.NewTestClient(t, addr, token)
}

// newOneShotClient returns a client that opens a connection per request.
// Tests that cut connections use it: net/http silently retries an idempotent
// request whose reused connection was closed, which could land the retry on
// whatever listens on the port by then.
func newOneShotClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	return newClientWithTransport(t, addr, "", &http.Transport{DisableKeepAlives: true})
}

func newClientWithTransport(t *testing.T, addr, token string, transport *http.Transport) *api.Client {
	t.Helper()
	t.Cleanup(transport.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", Token: token, Transport: transport})
	if err != nil {
		t.Fatalf("creating consul client: %v", err)
	}
	return c
}

// ttlService is a registration with one TTL check.
func ttlService(id, name, ttl, status string) *api.AgentServiceRegistration {
	return &api.AgentServiceRegistration{
		ID:   id,
		Name: name,
		Port: 8080,
		Check: &api.AgentServiceCheck{
			CheckID: "check:" + id,
			TTL:     ttl,
			Status:  status,
		},
	}
}

func register(ctx context.Context, t *testing.T, c *api.Client, reg *api.AgentServiceRegistration) {
	t.Helper()
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		t.Fatalf("registering %s: %v", reg.ID, err)
	}
}

func updateTTL(ctx context.Context, t *testing.T, c *api.Client, checkID, output, status string) {
	t.Helper()
	q := (&api.QueryOptions{}).WithContext(ctx)
	if err := c.Agent().UpdateTTLOpts(checkID, output, status, q); err != nil {
		t.Fatalf("updating check %s: %v", checkID, err)
	}
}

// health runs a non-blocking /v1/health/service query.
func health(ctx context.Context, t *testing.T, c *api.Client, service string, passing bool) ([]*api.ServiceEntry, *api.QueryMeta) {
	t.Helper()
	entries, meta, err := c.Health().Service(service, "", passing, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		t.Fatalf("querying health of %s: %v", service, err)
	}
	return entries, meta
}

// blockResult is what a blocking query returned, for tests that run one in
// the background.
type blockResult struct {
	entries []*api.ServiceEntry
	meta    *api.QueryMeta
	err     error
	elapsed time.Duration
}

// blockHealth starts a blocking health query in the background.
func blockHealth(ctx context.Context, c *api.Client, service string, index uint64, wait time.Duration) <-chan blockResult {
	out := make(chan blockResult, 1)
	go func() {
		start := time.Now()
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: wait}).WithContext(ctx)
		entries, meta, err := c.Health().Service(service, "", false, q)
		out <- blockResult{entries: entries, meta: meta, err: err, elapsed: time.Since(start)}
	}()
	return out
}

// waitBlocked waits until the agent has received n requests on path, so that
// a background query is known to be in flight.
func waitBlocked(ctx context.Context, t *testing.T, a *consultest.Agent, path string, n int64) {
	t.Helper()
	eventually(ctx, t, "query reached the agent", func() bool { return a.Requests(path) >= n })
}

// eventually polls cond until it holds or ctx ends.
func eventually(ctx context.Context, t *testing.T, what string, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting until %s", what)
		case <-tick.C:
		}
	}
}

// fakeClock is an injectable clock for Options.Now. Tests move it and call
// Agent.Tick, so that timing assertions do not depend on the machine's load.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// Advance moves the clock and fires the agent's timers that became due.
func (f *fakeClock) Advance(a *consultest.Agent, d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
	a.Tick()
}

// findCheck returns the check with the given ID from an entry.
func findCheck(e *api.ServiceEntry, id string) *api.HealthCheck {
	for _, c := range e.Checks {
		if c.CheckID == id {
			return c
		}
	}
	return nil
}

// statusError returns the HTTP status and body of a consul/api error.
func statusError(t *testing.T, err error) (int, string) {
	t.Helper()
	var se api.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("got error %v (%T), want an api.StatusError", err, err)
	}
	return se.Code, se.Body
}

// rawRequest sends a plain HTTP request, for what consul/api cannot express.
func rawRequest(ctx context.Context, t *testing.T, method, url string, header http.Header, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		t.Fatalf("building request: %v", err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	transport := &http.Transport{}
	defer transport.CloseIdleConnections()
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading response of %s %s: %v", method, url, err)
	}
	return resp, string(b)
}
