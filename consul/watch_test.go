package consul

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

func TestNextIndex(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		prev, got uint64
		want      uint64
	}{
		{"first answer", 0, 42, 42},
		{"timeout, same index", 42, 42, 42},
		{"moved forward", 42, 50, 50},
		{"went backwards: reset to 0", 50, 42, 0},
		{"went backwards to 0: reset to 0", 50, 0, 0},
		{"zero after a reset: use 1", 0, 0, 1},
		{"one", 0, 1, 1},
	} {
		if got := nextIndex(tc.prev, tc.got); got != tc.want {
			t.Errorf("%s: nextIndex(%d, %d) = %d, want %d", tc.name, tc.prev, tc.got, got, tc.want)
		}
	}
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	base, maxDelay := 500*time.Millisecond, 10*time.Second
	for n, want := range []time.Duration{1: 500 * time.Millisecond, 2: time.Second, 3: 2 * time.Second,
		4: 4 * time.Second, 5: 8 * time.Second, 6: 10 * time.Second, 7: 10 * time.Second, 30: 10 * time.Second} {
		if want == 0 {
			continue
		}
		seen := make(map[time.Duration]bool)
		for range 200 {
			d := backoff(base, maxDelay, n)
			if d < want/2 || d >= want {
				t.Fatalf("backoff after %d failures = %s, want in [%s, %s)", n, d, want/2, want)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("backoff after %d failures took only %d distinct values in 200 draws: no jitter?", n, len(seen))
		}
	}
	if d := backoff(time.Nanosecond, time.Nanosecond, 1); d < 0 || d > time.Nanosecond {
		t.Errorf("backoff of 1ns = %s", d)
	}
}

func TestInstances(t *testing.T) {
	t.Parallel()
	node := &api.Node{Node: "n1", Address: "10.0.0.1"}
	entries := []*api.ServiceEntry{
		{Node: node, Service: &api.AgentService{ID: "b", Address: "10.0.0.2", Port: 80, ModifyIndex: 7, Meta: map[string]string{"ws_connections": "3"}}},
		{Node: node, Service: &api.AgentService{ID: "a", Port: 81}}, // node address
		{Node: node, Service: &api.AgentService{ID: "v6", Address: "::1", Port: 82}},
		{Node: node, Service: &api.AgentService{ID: "noport", Address: "10.0.0.3"}},
		{Node: &api.Node{Node: "n2"}, Service: &api.AgentService{ID: "noaddr", Port: 83}},
		{Node: node},
		nil,
	}
	set, skipped := Instances(entries)
	if skipped != 4 {
		t.Errorf("skipped = %d, want 4", skipped)
	}
	want := []Instance{
		{ID: "a", Node: "n1", Addr: "10.0.0.1:81"},
		{ID: "b", Node: "n1", Addr: "10.0.0.2:80", ModifyIndex: 7, Meta: map[string]string{"ws_connections": "3"}},
		{ID: "v6", Node: "n1", Addr: "[::1]:82"},
	}
	if !equalInstances(set, want) {
		t.Fatalf("Instances = %+v, want %+v", set, want)
	}
	entries[0].Service.Meta["ws_connections"] = "4"
	if set[1].Meta["ws_connections"] != "3" {
		t.Error("Instances shares the meta map with the entry")
	}

	// Change detection: only what the balancer reads counts.
	changed := slices.Clone(want)
	changed[1].Meta = map[string]string{"ws_connections": "4"}
	moved := slices.Clone(want)
	moved[0].Addr = "10.0.0.9:81"
	reregistered := slices.Clone(want)
	reregistered[1].ModifyIndex = 8
	for name, other := range map[string][]Instance{"meta": changed, "address": moved, "modify index": reregistered, "one fewer": want[1:]} {
		if equalInstances(want, other) {
			t.Errorf("a change of %s went unnoticed", name)
		}
	}
	added, removed := diffIDs(want[1:], want[:2])
	if !slices.Equal(added, []string{"a"}) || !slices.Equal(removed, []string{"v6"}) {
		t.Errorf("diffIDs = %v, %v", added, removed)
	}
}

func TestWatcherFollowsAgent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	register(ctx, t, c, instance{id: "e2", port: 9002, tags: []string{"blue"}})
	register(ctx, t, c, instance{id: "sick", port: 9009, status: api.HealthCritical})

	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr()}, opts)
	var calls atomic.Int64
	var last atomic.Pointer[[]Instance]
	w.Subscribe(func(set []Instance) { calls.Add(1); last.Store(&set) })
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// The first answer is in before Start returns.
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1", "e2"}) || !w.Synced() {
		t.Fatalf("after Start: %v (synced %v), want [e1 e2]", got, w.Synced())
	}
	if calls.Load() != 1 {
		t.Fatalf("subscriber called %d times after Start, want 1", calls.Load())
	}

	seen := func(want ...string) func() bool {
		return func() bool { return slices.Equal(ids(w.Instances()), want) }
	}
	// A new instance is seen within a second.
	register(ctx, t, c, instance{id: "e3", port: 9003})
	took := eventually(t, time.Second, "e3 appears", seen("e1", "e2", "e3"))
	t.Logf("new instance seen after %s", took)

	// A check that turns critical, maintenance and deregistration remove.
	if err := c.Agent().UpdateTTL("ttl:e1", "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "critical e1 leaves", seen("e2", "e3"))
	if err := c.Agent().EnableServiceMaintenance("e2", "test"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "e2 in maintenance leaves", seen("e3"))
	if err := c.Agent().ServiceDeregister("e3"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "deregistered e3 leaves", seen())
	if err := c.Agent().DisableServiceMaintenance("e2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "e2 back from maintenance", seen("e2"))

	// A new report (re-registration with new meta) is a change.
	register(ctx, t, c, instance{id: "e2", port: 9002, meta: map[string]string{"ws_connections": "12"}})
	eventually(t, time.Second, "e2's report", func() bool {
		set := w.Instances()
		return len(set) == 1 && set[0].Meta["ws_connections"] == "12"
	})
	if got := (*last.Load()); !equalInstances(got, w.Instances()) {
		t.Errorf("subscriber's last set %v differs from the watcher's %v", got, w.Instances())
	}
	if calls.Load() != w.Changes() {
		t.Errorf("subscriber called %d times, watcher counted %d changes", calls.Load(), w.Changes())
	}
}

func TestWatcherTag(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	register(ctx, t, c, instance{id: "e2", port: 9002, tags: []string{"blue"}})
	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Tag: "blue"}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e2"}) {
		t.Fatalf("with tag blue: %v, want [e2]", got)
	}
}

// A blocking query that returns without a change (a write to the service
// that does not touch what the balancer reads) is not passed on.
func TestWatcherActsOnlyOnChange(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	opts, _ := fastOptions()
	opts.Rate = rate.Inf
	w := newWatcher(t, Config{Address: agent.Addr()}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	changes, queries := w.Changes(), w.Queries()
	for i := range 10 {
		// Output-only updates bump the service's index (and, with
		// check_update_interval 0, reach the catalog at once).
		if err := c.Agent().UpdateTTL("ttl:e1", "output "+strconv.Itoa(i), api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 2*time.Second, "the watcher woke up", func() bool { return w.Queries() >= queries+5 })
	if w.Changes() != changes {
		t.Errorf("%d changes passed on after output-only updates, want none", w.Changes()-changes)
	}
}

func TestWatcherACL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{ACLToken: "right"})
	register(ctx, t, c, instance{id: "e1", port: 9001})

	for _, tc := range []struct{ name, token string }{{"wrong token", "wrong"}, {"no token", ""}} {
		opts, _ := fastOptions()
		w := newWatcher(t, Config{Address: agent.Addr(), Token: tc.token}, opts)
		err := w.Start(ctx)
		if !errors.Is(err, ErrPermissionDenied) {
			t.Fatalf("%s: Start = %v, want ErrPermissionDenied", tc.name, err)
		}
		if !strings.Contains(err.Error(), "consul: permission denied: check the token") {
			t.Errorf("%s: unclear error %q", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
		w.Stop()
	}

	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Token: "right"}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatalf("right token: %v", err)
	}
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1"}) {
		t.Fatalf("right token: %v, want [e1]", got)
	}
}

// The agent goes away for a while: the last set is kept, the outage is
// logged once, retries back off, and changes are seen when it is back.
func TestWatcherOutage(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	register(ctx, t, c, instance{id: "e2", port: 9002})
	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr()}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := w.Queries()
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	const outage = 2 * time.Second
	time.Sleep(outage)
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1", "e2"}) {
		t.Errorf("during the outage: %v, want the last known [e1 e2]", got)
	}
	attempts := w.Queries() - before
	// Delays drawn in [d/2, d) for d = 50, 100, 200, 400, 400, ... ms: at
	// most about 2s/200ms + 4 attempts; a hot loop would make thousands.
	t.Logf("%d queries during a %s outage", attempts, outage)
	if attempts < 3 || attempts > 16 {
		t.Errorf("%d queries during a %s outage, want between 3 and 16", attempts, outage)
	}
	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	register(ctx, t, c, instance{id: "e3", port: 9003})
	took := eventually(t, 2*time.Second, "e3 seen after the outage", func() bool {
		return slices.Equal(ids(w.Instances()), []string{"e1", "e2", "e3"})
	})
	t.Logf("change after the outage seen in %s", took)

	if n := logs.FilterMessageSnippet("consul query failed; keeping").Len(); n != 1 {
		t.Errorf("outage logged %d times at error level, want once", n)
	}
	recovered := logs.FilterMessage("consul answers again").All()
	if len(recovered) != 1 {
		t.Fatalf("recovery logged %d times, want once", len(recovered))
	}
	if f := recovered[0].ContextMap()["failed_queries"]; f == nil || f.(int64) < 3 {
		t.Errorf("recovery log says %v failed queries", f)
	}
}

// Consul unreachable at start: Start returns, the watcher keeps trying and
// fills the set when Consul answers.
func TestWatcherUnreachableAtStart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr()}, opts)
	start := time.Now()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("Start with Consul down = %v, want nil (retry in the background)", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("Start took %s with Consul refusing connections", time.Since(start))
	}
	if w.Synced() || len(w.Instances()) != 0 {
		t.Fatal("synced without Consul")
	}
	if logs.FilterMessageSnippet("consul query failed").Len() != 1 {
		t.Errorf("the failure at start was not logged once: %v", logs.All())
	}
	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "synced after Consul came up", func() bool {
		return w.Synced() && slices.Equal(ids(w.Instances()), []string{"e1"})
	})
}

// Stop returns promptly while a blocking query is in flight, and nothing is
// queried after it.
func TestWatcherStop(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, instance{id: "e1", port: 9001})
	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), WaitTime: time.Minute}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "a blocking query in flight", func() bool {
		return agent.Requests("/v1/health/service/echo") >= 2
	})
	start := time.Now()
	w.Stop()
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Errorf("Stop took %s", d)
	}
	n := w.Queries()
	register(ctx, t, c, instance{id: "e2", port: 9002})
	time.Sleep(200 * time.Millisecond)
	if w.Queries() != n {
		t.Errorf("queries after Stop")
	}
	w.Stop() // idempotent

	// A context that ends stops the loop too.
	cctx, cancel := context.WithCancel(ctx)
	w2 := newWatcher(t, Config{Address: agent.Addr(), WaitTime: time.Minute}, opts)
	if err := w2.Start(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w2.done:
	case <-time.After(time.Second):
		t.Fatal("the loop outlived its context")
	}
}

// fakeConsul answers /v1/health/service/echo from a script of indexes and
// records the index and consistency of every query.
type fakeConsul struct {
	mu      sync.Mutex
	indexes []uint64 // X-Consul-Index of each answer; the last one repeats
	status  int      // if not 0, every answer has this status
	seen    []string // "index=..." of each query, "-" when absent
	params  []string // raw query strings
	n       int
}

func (f *fakeConsul) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	idx := "-"
	if v := r.URL.Query().Get("index"); v != "" {
		idx = v
	}
	f.seen = append(f.seen, idx)
	f.params = append(f.params, r.URL.RawQuery)
	if f.status != 0 {
		http.Error(w, "scripted failure", f.status)
		return
	}
	i := min(f.n, len(f.indexes)-1)
	f.n++
	w.Header().Set("X-Consul-Index", strconv.FormatUint(f.indexes[i], 10))
	w.Header().Set("X-Consul-LastContact", "0")
	w.Header().Set("X-Consul-KnownLeader", "true")
	entries := []*api.ServiceEntry{{
		Node:    &api.Node{Node: "n1", Address: "127.0.0.1"},
		Service: &api.AgentService{ID: "e1", Service: "echo", Port: 9001, Meta: map[string]string{"answer": strconv.Itoa(f.n)}},
	}}
	_ = json.NewEncoder(w).Encode(entries)
}

func (f *fakeConsul) queries() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.seen)
}

func startFake(t *testing.T, f *fakeConsul) string {
	t.Helper()
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// The loop applies Consul's index rules: block on the last index, reset to
// 0 when it goes backwards, use 1 instead of 0.
func TestWatcherIndexRules(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	f := &fakeConsul{indexes: []uint64{10, 10, 12, 5, 7, 0, 0, 9}}
	opts, _ := fastOptions()
	opts.Rate = rate.Inf
	w := newWatcher(t, Config{Address: startFake(t, f), Consistency: ConsistencyStale}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"-",  // Start: no index
		"10", // answered 10
		"10", // answered 10 again (a timeout)
		"12", // answered 12
		"-",  // answered 5: backwards, reset to 0
		"7",  // answered 7
		"-",  // answered 0: backwards from 7, reset to 0
		"1",  // answered 0 again: use 1
		"9",  // answered 9
	}
	eventually(t, 2*time.Second, "the script played", func() bool { return len(f.queries()) >= len(want) })
	w.Stop()
	if got := f.queries()[:len(want)]; !slices.Equal(got, want) {
		t.Errorf("indexes sent: %v, want %v", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.params {
		if !strings.Contains(p, "stale") || !strings.Contains(p, "passing") {
			t.Fatalf("query %q lacks stale or passing", p)
		}
	}
}

// A Consul that answers every query at once with a new result (a storm of
// writes to the service) gets at most the token bucket's rate.
func TestWatcherRateLimit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	idx := make([]uint64, 1000)
	for i := range idx {
		idx[i] = uint64(i + 1)
	}
	f := &fakeConsul{indexes: idx}
	w := newWatcher(t, Config{Address: startFake(t, f)}, nil) // default rate: 2/s, burst 2
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	w.Stop()
	n := len(f.queries())
	t.Logf("%d queries in 2s against a Consul that always answers at once", n)
	// 1 at Start, a burst of 2, then 2 per second.
	if n < 4 || n > 8 {
		t.Errorf("%d queries in 2s, want 4..8", n)
	}
}

func TestWatcherStartErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	for _, tc := range []struct {
		status    int
		permanent bool
	}{
		{http.StatusBadRequest, true},
		{http.StatusForbidden, true},
		{http.StatusUnauthorized, true},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
	} {
		t.Run(strconv.Itoa(tc.status), func(t *testing.T) {
			t.Parallel()
			f := &fakeConsul{status: tc.status, indexes: []uint64{1}}
			opts, logs := fastOptions()
			w := newWatcher(t, Config{Address: startFake(t, f)}, opts)
			err := w.Start(ctx)
			if tc.permanent != (err != nil) {
				t.Fatalf("Start = %v, want an error: %v", err, tc.permanent)
			}
			if err == nil {
				if logs.FilterMessageSnippet("consul query failed").Len() != 1 {
					t.Error("the failure was not logged")
				}
				eventually(t, time.Second, "retries", func() bool { return len(f.queries()) >= 3 })
			}
			if tc.status == http.StatusForbidden && !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("403: %v is not ErrPermissionDenied", err)
			}
		})
	}
}

// A token that loses its rights while the watcher runs: the set is kept
// rather than emptied by ACL filtering.
func TestWatcherKeepsSetWhenFiltered(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	var filtered atomic.Bool
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Consul-Index", fmt.Sprint(time.Now().UnixNano()))
		// consul/api stops reading the meta headers at a missing LastContact.
		w.Header().Set("X-Consul-LastContact", "0")
		if filtered.Load() {
			w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
			fmt.Fprint(w, "[]")
			return
		}
		fmt.Fprint(w, `[{"Node":{"Node":"n1","Address":"127.0.0.1"},"Service":{"ID":"e1","Port":9001}}]`)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: strings.TrimPrefix(srv.URL, "http://")}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	filtered.Store(true)
	eventually(t, 2*time.Second, "the filtering noticed", func() bool {
		return logs.FilterMessageSnippet("consul query failed").Len() == 1
	})
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1"}) {
		t.Errorf("after ACL filtering: %v, want the last known [e1]", got)
	}
}
