package consultest_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// Stop takes the listener down ("Consul unreachable for a while"), cutting
// blocking queries; Restart brings it back on the same address with the
// state kept, while the agent's TTLs kept running meanwhile.
func TestStopRestart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
	register(ctx, t, c, ttlService("short-1", "short", "200ms", api.HealthPassing))
	_, meta := health(ctx, t, c, "web", false)
	addr := a.Addr()

	inFlight := blockHealth(ctx, newOneShotClient(t, addr), "web", meta.LastIndex, 8*time.Second)
	waitBlocked(ctx, t, a, "/v1/health/service/web", 2)
	if err := a.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	if r := <-inFlight; r.err == nil {
		t.Errorf("blocking query across Stop answered after %v, want an error", r.elapsed)
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	if _, _, err := newOneShotClient(t, addr).Health().Service("web", "", false, q); err == nil {
		t.Errorf("query succeeded while stopped")
	}

	time.Sleep(600 * time.Millisecond) // past short-1's TTL
	if err := a.Restart(); err != nil {
		t.Fatalf("restarting: %v", err)
	}
	if a.Addr() != addr {
		t.Errorf("restarted on %s, want %s", a.Addr(), addr)
	}
	entries, after := health(ctx, t, c, "web", true)
	if len(entries) != 1 || after.LastIndex != meta.LastIndex {
		t.Errorf("after restart: %d passing web instances at index %d, want 1 at %d", len(entries), after.LastIndex, meta.LastIndex)
	}
	eventually(ctx, t, "short-1's TTL, run out while the listener was down, shows", func() bool {
		passing, _ := health(ctx, t, c, "short", true)
		return len(passing) == 0
	})
	if err := a.Restart(); err == nil {
		t.Errorf("restarting a serving agent succeeded")
	}
}

// Close ends blocking queries at once and refuses to start again.
func TestCloseEndsBlockingQueries(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := consultest.New(consultest.Options{})
	if err := a.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("starting: %v", err)
	}
	c := newOneShotClient(t, a.Addr())
	_, meta := health(ctx, t, c, "web", false)
	inFlight := blockHealth(ctx, c, "web", meta.LastIndex, 8*time.Second)
	waitBlocked(ctx, t, a, "/v1/health/service/web", 2)

	start := time.Now()
	if err := a.Close(); err != nil {
		t.Fatalf("closing: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 4*time.Second {
		t.Errorf("Close took %v with a blocking query in flight", elapsed)
	}
	if r := <-inFlight; r.err == nil {
		t.Errorf("blocking query survived Close")
	}
	if err := a.Start("127.0.0.1:0"); !errors.Is(err, consultest.ErrClosed) {
		t.Errorf("Start after Close: %v, want ErrClosed", err)
	}
	if err := a.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// Close leaves no goroutine behind. This test does not run in parallel:
// counting goroutines needs the process to itself, and Go runs parallel
// tests only after the sequential ones.
func TestCloseLeaksNoGoroutines(t *testing.T) {
	ctx := testContext(t)
	before := runtime.NumGoroutine()

	a := consultest.New(consultest.Options{ReapInterval: 10 * time.Millisecond})
	if err := a.Start("127.0.0.1:0"); err != nil {
		t.Fatalf("starting: %v", err)
	}
	transport := &http.Transport{DisableKeepAlives: true}
	c, err := api.NewClient(&api.Config{Address: a.Addr(), Transport: transport})
	if err != nil {
		t.Fatalf("creating client: %v", err)
	}
	register(ctx, t, c, ttlService("web-1", "web", "50ms", api.HealthPassing))
	_, meta := health(ctx, t, c, "web", false)
	inFlight := blockHealth(ctx, c, "web", meta.LastIndex+100, 5*time.Second)
	waitBlocked(ctx, t, a, "/v1/health/service/web", 2)
	if err := a.Stop(); err != nil {
		t.Fatalf("stopping: %v", err)
	}
	<-inFlight
	if err := a.Restart(); err != nil {
		t.Fatalf("restarting: %v", err)
	}
	inFlight = blockHealth(ctx, c, "web", meta.LastIndex+100, 5*time.Second)
	waitBlocked(ctx, t, a, "/v1/health/service/web", 3)
	if err := a.Close(); err != nil {
		t.Fatalf("closing: %v", err)
	}
	<-inFlight
	transport.CloseIdleConnections()

	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := runtime.NumGoroutine(); after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines before, %d after Close:\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
}

// ServerWrites counts what a real agent sends to the servers, and nothing
// else.
func TestServerWrites(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{}) // default 5m check_update_interval
	agent := c.Agent()
	q := (&api.QueryOptions{}).WithContext(ctx)
	reg := ttlService("web-1", "web", "10s", api.HealthPassing)
	reg.Checks = api.AgentServiceChecks{{CheckID: "extra", TTL: "10s"}}
	steps := []struct {
		name string
		do   func() error
		want int64
	}{
		{"register with checks", func() error { return agent.ServiceRegister(reg) }, 1},
		{"identical re-register", func() error { return agent.ServiceRegister(reg) }, 0},
		{"status change", func() error { return agent.UpdateTTLOpts("check:web-1", "", api.HealthWarning, q) }, 1},
		{"same status, same output", func() error { return agent.UpdateTTLOpts("check:web-1", "", api.HealthWarning, q) }, 0},
		{"same status, new output (deferred 5m)", func() error {
			return agent.UpdateTTLOpts("check:web-1", "conns=9", api.HealthWarning, q)
		}, 0},
		{"meta change", func() error {
			reg.Meta = map[string]string{"conns": "9"}
			return agent.ServiceRegister(reg)
		}, 1},
		{"maintenance on", func() error { return agent.EnableServiceMaintenanceOpts("web-1", "", q) }, 1},
		{"maintenance on again", func() error { return agent.EnableServiceMaintenanceOpts("web-1", "", q) }, 0},
		{"maintenance off", func() error { return agent.DisableServiceMaintenanceOpts("web-1", q) }, 1},
		{"drop a check", func() error {
			reg.Checks = nil
			return agent.ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true})
		}, 1},
		{"deregister", func() error { return agent.ServiceDeregisterOpts("web-1", q) }, 1},
		{"read", func() error { _, _, err := c.Health().Service("web", "", false, q); return err }, 0},
	}
	for _, step := range steps {
		before := a.ServerWrites()
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if got := a.ServerWrites() - before; got != step.want {
			t.Errorf("%s: %d server writes, want %d", step.name, got, step.want)
		}
	}
}

func TestRequestsCounted(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	for range 3 {
		health(ctx, t, c, "web", false)
	}
	health(ctx, t, c, "api", false)
	if _, err := c.Agent().Services(); err != nil {
		t.Fatalf("listing services: %v", err)
	}
	for prefix, want := range map[string]int64{
		"/v1/health/service/":    4,
		"/v1/health/service/web": 3,
		"/v1/agent/services":     1,
		"/v1/catalog/":           0,
	} {
		if got := a.Requests(prefix); got != want {
			t.Errorf("Requests(%q) = %d, want %d", prefix, got, want)
		}
	}
}

// Handler serves the same API on a server of the caller's.
func TestHandlerOnHTTPTest(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a := consultest.New(consultest.Options{})
	srv := httptest.NewServer(a.Handler())
	t.Cleanup(func() {
		srv.Close()
		if err := a.Close(); err != nil {
			t.Errorf("closing agent: %v", err)
		}
	})
	c := newClient(t, srv.Listener.Addr().String(), "")
	register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
	if entries, _ := health(ctx, t, c, "web", true); len(entries) != 1 {
		t.Errorf("got %d passing instances through Handler, want 1", len(entries))
	}
	leader, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	if err != nil || leader == "" {
		t.Errorf("leader %q, err %v", leader, err)
	}
}
