package consultest_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// Consul docs, "Blocking Queries": a request with ?index waits until the
// resource changes past that index or the wait runs out; every write to any
// instance of a service wakes every watcher of that service (consul#3890).
func TestBlockingQueryWakesOnWrites(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		change func(ctx context.Context, t *testing.T, c *api.Client)
	}{
		{"another instance registers", func(ctx context.Context, t *testing.T, c *api.Client) {
			register(ctx, t, c, ttlService("web-2", "web", "10s", api.HealthPassing))
		}},
		{"instance deregisters", func(ctx context.Context, t *testing.T, c *api.Client) {
			if err := c.Agent().ServiceDeregisterOpts("web-1", (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				t.Fatalf("deregistering: %v", err)
			}
		}},
		{"check status changes", func(ctx context.Context, t *testing.T, c *api.Client) {
			updateTTL(ctx, t, c, "check:web-1", "busy", api.HealthWarning)
		}},
		{"meta changes by re-registering", func(ctx context.Context, t *testing.T, c *api.Client) {
			reg := ttlService("web-1", "web", "10s", api.HealthPassing)
			reg.Meta = map[string]string{"conns": "42"}
			register(ctx, t, c, reg)
		}},
		{"maintenance starts", func(ctx context.Context, t *testing.T, c *api.Client) {
			if err := c.Agent().EnableServiceMaintenanceOpts("web-1", "drain", (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				t.Fatalf("enabling maintenance: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			a, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
			register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
			_, meta := health(ctx, t, c, "web", false)

			// Were the write not to wake it, the query would come back only
			// after its wait, with the old index.
			done := blockHealth(ctx, c, "web", meta.LastIndex, 8*time.Second)
			waitBlocked(ctx, t, a, "/v1/health/service/web", 2)
			tt.change(ctx, t, c)

			r := <-done
			if r.err != nil {
				t.Fatalf("blocking query: %v", r.err)
			}
			if r.meta.LastIndex <= meta.LastIndex {
				t.Errorf("answered after %v with index %d, want woken with more than %d", r.elapsed, r.meta.LastIndex, meta.LastIndex)
			}
		})
	}
}

func TestBlockingQueryTimesOutAtWait(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
	_, meta := health(ctx, t, c, "web", false)

	const wait = 400 * time.Millisecond
	done := blockHealth(ctx, c, "web", meta.LastIndex, wait)
	waitBlocked(ctx, t, a, "/v1/health/service/web", 2)
	// A write to another service must not wake a watcher of "web".
	register(ctx, t, c, ttlService("api-1", "api", "10s", api.HealthPassing))

	r := <-done
	if r.err != nil {
		t.Fatalf("blocking query: %v", r.err)
	}
	// Consul answers at wait plus up to wait/16 of jitter; allow for a busy
	// machine on top.
	if r.elapsed < wait || r.elapsed > wait+wait/16+3*time.Second {
		t.Errorf("answered after %v, want about %v", r.elapsed, wait)
	}
	if r.meta.LastIndex != meta.LastIndex {
		t.Errorf("index moved from %d to %d on timeout", meta.LastIndex, r.meta.LastIndex)
	}
	if len(r.entries) != 1 {
		t.Errorf("got %d entries on timeout, want the current 1", len(r.entries))
	}
}

func TestBlockingQueryIndexZeroAnswersAtOnce(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{})
	start := time.Now()
	q := (&api.QueryOptions{WaitIndex: 0, WaitTime: 8 * time.Second}).WithContext(ctx)
	if _, _, err := c.Health().Service("web", "", false, q); err != nil {
		t.Fatalf("querying: %v", err)
	}
	if elapsed := time.Since(start); elapsed > 4*time.Second {
		t.Errorf("index 0 blocked for %v", elapsed)
	}
}

// An unknown service answers [] with a usable index, and a watcher of it wakes
// when it appears.
func TestBlockingQueryUnknownService(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	entries, meta := health(ctx, t, c, "nosuch", false)
	if entries == nil || len(entries) != 0 {
		t.Fatalf("got %#v, want an empty list", entries)
	}
	if meta.LastIndex < 1 {
		t.Fatalf("got index %d, want at least 1", meta.LastIndex)
	}

	done := blockHealth(ctx, c, "nosuch", meta.LastIndex, 8*time.Second)
	waitBlocked(ctx, t, a, "/v1/health/service/nosuch", 2)
	register(ctx, t, c, ttlService("nosuch-1", "nosuch", "10s", api.HealthPassing))
	r := <-done
	if r.err != nil {
		t.Fatalf("blocking query: %v", r.err)
	}
	if len(r.entries) != 1 || r.meta.LastIndex <= meta.LastIndex {
		t.Errorf("woke with %d entries at index %d, want 1 entry past %d", len(r.entries), r.meta.LastIndex, meta.LastIndex)
	}
}

// Every write moves the service's index forward, and the index is in the
// headers Consul documents.
func TestIndexMonotonicAndHeaders(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	agent := c.Agent()
	q := (&api.QueryOptions{}).WithContext(ctx)
	steps := []struct {
		name string
		do   func() error
	}{
		{"register", func() error { return agent.ServiceRegister(ttlService("web-1", "web", "10s", "")) }},
		{"pass", func() error { return agent.UpdateTTLOpts("check:web-1", "ok", api.HealthPassing, q) }},
		{"output", func() error { return agent.UpdateTTLOpts("check:web-1", "ok 2", api.HealthPassing, q) }},
		{"warn", func() error { return agent.UpdateTTLOpts("check:web-1", "full", api.HealthWarning, q) }},
		{"second instance", func() error { return agent.ServiceRegister(ttlService("web-2", "web", "10s", "")) }},
		{"maintenance on", func() error { return agent.EnableServiceMaintenanceOpts("web-1", "", q) }},
		{"maintenance off", func() error { return agent.DisableServiceMaintenanceOpts("web-1", q) }},
		{"deregister one", func() error { return agent.ServiceDeregisterOpts("web-2", q) }},
		{"deregister last", func() error { return agent.ServiceDeregisterOpts("web-1", q) }},
		{"register again", func() error { return agent.ServiceRegister(ttlService("web-1", "web", "10s", "")) }},
	}
	var last uint64
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		_, meta := health(ctx, t, c, "web", false)
		if meta.LastIndex <= last {
			t.Errorf("after %s: index %d, want more than %d", step.name, meta.LastIndex, last)
		}
		last = meta.LastIndex
	}

	resp, _ := rawRequest(ctx, t, "GET", "http://"+a.Addr()+"/v1/health/service/web", nil, "")
	if got := resp.Header.Get("X-Consul-Index"); got != strconv.FormatUint(last, 10) {
		t.Errorf("X-Consul-Index = %q, want %d", got, last)
	}
	for header, want := range map[string]string{
		"X-Consul-KnownLeader":      "true",
		"X-Consul-LastContact":      "0",
		consultest.TestDoubleHeader: consultest.TestDoubleNotice,
	} {
		if got := resp.Header.Get(header); got != want {
			t.Errorf("%s = %q, want %q", header, got, want)
		}
	}
}

// Re-registering a service unchanged is no write and wakes nobody.
func TestIdenticalReregistrationIsNoWrite(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	reg := ttlService("web-1", "web", "10s", api.HealthPassing)
	reg.Meta = map[string]string{"zone": "a"}
	register(ctx, t, c, reg)
	_, before := health(ctx, t, c, "web", false)
	writes := a.ServerWrites()

	register(ctx, t, c, reg)

	if got := a.ServerWrites(); got != writes {
		t.Errorf("server writes went from %d to %d", writes, got)
	}
	if _, after := health(ctx, t, c, "web", false); after.LastIndex != before.LastIndex {
		t.Errorf("index moved from %d to %d", before.LastIndex, after.LastIndex)
	}
}
