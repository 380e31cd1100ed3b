package consul

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
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
	agent, c, svc := sharedAgent(t)
	sid := func(id string) string { return svc + "-" + id }
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002, tags: []string{"blue"}})
	register(ctx, t, c, instance{service: svc, id: "sick", port: 9009, status: api.HealthCritical})

	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
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
	// A new instance is seen at once: the blocking query returns on the
	// write. The bounds below are the test's deadline, not the figure; the
	// figure is logged.
	register(ctx, t, c, instance{service: svc, id: "e3", port: 9003})
	took := eventually(t, 5*time.Second, "e3 appears", seen("e1", "e2", "e3"))
	t.Logf("new instance seen after %s", took)

	// A check that turns critical, maintenance and deregistration remove.
	if err := c.Agent().UpdateTTL("ttl:"+sid("e1"), "down", api.HealthCritical); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "critical e1 leaves", seen("e2", "e3"))
	if err := c.Agent().EnableServiceMaintenance(sid("e2"), "test"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "e2 in maintenance leaves", seen("e3"))
	if err := c.Agent().ServiceDeregister(sid("e3")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "deregistered e3 leaves", seen())
	if err := c.Agent().DisableServiceMaintenance(sid("e2")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "e2 back from maintenance", seen("e2"))

	// A new report (re-registration with new meta) is a change.
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002, meta: map[string]string{"ws_connections": "12"}})
	eventually(t, 5*time.Second, "e2's report", func() bool {
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
	agent, c, svc := sharedAgent(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002, tags: []string{"blue"}})
	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc, Tag: "blue"}, opts)
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
	agent, c, svc := sharedAgent(t) // check_update_interval "0s": output reaches the catalog at once
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	opts, _ := fastOptions()
	opts.Rate = rate.Inf
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	changes, queries := w.Changes(), w.Queries()
	for i := range 10 {
		// Output-only updates bump the service's index.
		if err := c.Agent().UpdateTTL("ttl:"+svc+"-e1", "output "+strconv.Itoa(i), api.HealthPassing); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, 5*time.Second, "the watcher woke up", func() bool { return w.Queries() >= queries+3 })
	if w.Changes() != changes {
		t.Errorf("%d changes passed on after output-only updates, want none", w.Changes()-changes)
	}
}

// ACLs on a real agent: a missing or wrong token and a token without
// node:read are refused with a clear error; a balancer's token works; a
// token that loses its rights while the watcher runs keeps the last set
// rather than letting ACL filtering empty it.
func TestWatcherACL(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := ownAgent(t, consuldev.Options{ACL: true})
	const svc = "acl"
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	balancer := agent.Token(t, "balancer", consuldev.BalancerRules(svc))
	weak := agent.Token(t, "weak", `service "`+svc+`" { policy = "read" }`) // no node:read

	for _, tc := range []struct{ name, token, says string }{
		{"no token", "", "no ACL token"},
		{"wrong token", "not-a-token", "ACL not found"},
		{"too weak a token", weak, "filtered out by ACLs"},
	} {
		opts, logs := fastOptions()
		w := newWatcher(t, Config{Address: agent.Addr(), Service: svc, Token: tc.token}, opts)
		err := w.Start(ctx)
		if !errors.Is(err, ErrPermissionDenied) {
			t.Fatalf("%s: Start = %v, want ErrPermissionDenied (logs: %v)", tc.name, err, logs.All())
		}
		if !strings.Contains(err.Error(), "consul: permission denied: check the token") || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: unclear error %q", tc.name, err)
		}
		t.Logf("%s: %v", tc.name, err)
		w.Stop()
	}

	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc, Token: balancer}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatalf("balancer token: %v", err)
	}
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1"}) {
		t.Fatalf("balancer token: %v, want [e1]", got)
	}

	// The operator takes node:read away from the balancer's policy.
	policy, _, err := c.ACL().PolicyReadByName("balancer", nil)
	if err != nil {
		t.Fatal(err)
	}
	policy.Rules = `service "` + svc + `" { policy = "read" }`
	if _, _, err := c.ACL().PolicyUpdate(policy, nil); err != nil {
		t.Fatal(err)
	}
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002}) // wakes the watch
	// The change takes a moment to reach the agent's ACL resolution, so the
	// watcher may see e2 first; what it must never do is empty the set.
	eventually(t, 10*time.Second, "the filtering noticed", func() bool {
		if len(w.Instances()) == 0 {
			t.Fatalf("the set was emptied after the policy change; logs %v", logs.All())
		}
		return logs.FilterMessageSnippet("consul query failed").Len() == 1
	})
	if got := ids(w.Instances()); len(got) == 0 || got[0] != "e1" {
		t.Errorf("after ACL filtering: %v, want the last known set", got)
	}
}

// The agent goes away for a while: the last set is kept, the outage is
// logged once, retries back off, and the agent's state is picked up within
// about a probe interval once it is back, although the backoff has grown.
func TestWatcherOutage(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := ownAgent(t, consuldev.Options{})
	const svc = "outage"
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002})
	opts, logs := fastOptions()
	opts.BackoffMax = 10 * time.Second // the default cap: what a balancer would wait without probing
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := w.Queries()
	agent.Stop(t)
	const outage = 5 * time.Second
	time.Sleep(outage)
	if got := ids(w.Instances()); !slices.Equal(got, []string{"e1", "e2"}) {
		t.Errorf("during the outage: %v, want the last known [e1 e2]", got)
	}
	attempts := w.Queries() - before
	// Delays drawn in [d/2, d) for d = 50, 100, 200, ... ms: at most about
	// a dozen in 5 s; a hot loop would make thousands. Probes are not
	// queries.
	t.Logf("%d queries during a %s outage", attempts, outage)
	if attempts < 3 || attempts > 16 {
		t.Errorf("%d queries during a %s outage, want between 3 and 16", attempts, outage)
	}
	// The agent comes back empty (a dev agent), and only e3 registers.
	agent.Restart(t)
	back := time.Now()
	register(ctx, t, c, instance{service: svc, id: "e3", port: 9003})
	took := eventually(t, 5*time.Second, "e3 alone seen after the outage", func() bool {
		return slices.Equal(ids(w.Instances()), []string{"e3"})
	})
	t.Logf("agent's state seen %s after its return, after %d failed queries", time.Since(back).Round(time.Millisecond), attempts)
	_ = took

	if n := logs.FilterMessageSnippet("consul query failed; keeping").Len(); n != 1 {
		t.Errorf("outage logged %d times at error level, want once", n)
	}
	recovered := logs.FilterMessage("consul answers again").All()
	if len(recovered) != 1 {
		t.Fatalf("recovery logged %d times, want once", len(recovered))
	}
	if f := recovered[0].ContextMap()["failures"]; f == nil || f.(int64) < 3 {
		t.Errorf("recovery log says %v failed queries", f)
	}
}

// Consul unreachable at start: Start returns, the watcher keeps trying and
// fills the set when Consul answers.
func TestWatcherUnreachableAtStart(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c := ownAgent(t, consuldev.Options{})
	const svc = "late"
	agent.Stop(t)
	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatalf("Start with Consul down = %v, want nil (retry in the background)", err)
	}
	if w.Synced() || len(w.Instances()) != 0 {
		t.Fatal("synced without Consul")
	}
	if logs.FilterMessageSnippet("consul query failed").Len() != 1 {
		t.Errorf("the failure at start was not logged once: %v", logs.All())
	}
	agent.Restart(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	eventually(t, 5*time.Second, "synced after Consul came up", func() bool {
		return w.Synced() && slices.Equal(ids(w.Instances()), []string{"e1"})
	})
}

// Consul answering with errors (up, but failing) is retried with the full
// backoff, and a refusal at start (a configuration error) is returned by
// Start. The answers come from a Front before the real agent.
func TestWatcherStartErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c, svc := sharedAgent(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
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
			front := consuldev.NewFront(t, agent.Addr())
			front.FailWith(tc.status)
			opts, logs := fastOptions()
			w := newWatcher(t, Config{Address: front.Addr(), Service: svc}, opts)
			err := w.Start(ctx)
			if tc.permanent != (err != nil) {
				t.Fatalf("Start = %v, want an error: %v", err, tc.permanent)
			}
			if tc.status == http.StatusForbidden && !errors.Is(err, ErrPermissionDenied) {
				t.Errorf("403: %v is not ErrPermissionDenied", err)
			}
			if err != nil {
				return
			}
			if logs.FilterMessageSnippet("consul query failed").Len() != 1 {
				t.Error("the failure was not logged")
			}
			path := "/v1/health/service/" + svc
			eventually(t, 5*time.Second, "retries", func() bool { return front.Requests(path) >= 3 })
			// Then Consul recovers: the set arrives.
			front.SetFault(consuldev.Pass)
			eventually(t, 10*time.Second, "the set after recovery", func() bool {
				return slices.Equal(ids(w.Instances()), []string{"e1"})
			})
		})
	}
}

// A storm of writes to the service (every backend re-registering at once)
// costs each watcher at most the token bucket's rate of queries.
func TestWatcherRateLimit(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c, svc := sharedAgent(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, nil) // default rate: 2/s, burst 2
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	stormCtx, stop := context.WithTimeout(ctx, 2*time.Second)
	defer stop()
	writes := 0
	for i := 0; stormCtx.Err() == nil; i++ {
		register(ctx, t, c, instance{service: svc, id: "e1", port: 9001, meta: map[string]string{"ws_connections": strconv.Itoa(i)}})
		writes++
	}
	n := w.Queries()
	w.Stop()
	t.Logf("%d queries in 2s while the service was written %d times", n, writes)
	// 1 at Start, a burst of 2, then 2 per second.
	if writes < 20 || n > 8 {
		t.Errorf("%d queries for %d writes in 2s, want at most 8 (and a real storm, >= 20 writes)", n, writes)
	}
}

// Stop returns promptly while a blocking query is in flight, and nothing is
// queried after it.
func TestWatcherStop(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c, svc := sharedAgent(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001})
	front := consuldev.NewFront(t, agent.Addr())
	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: front.Addr(), Service: svc, WaitTime: time.Minute}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "a blocking query in flight", func() bool {
		return front.Requests("/v1/health/service/"+svc) >= 2
	})
	// Stop cancels the query rather than waiting out its minute; the bound
	// is the test's deadline.
	start := time.Now()
	w.Stop()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Stop took %s", d)
	}
	n := w.Queries()
	register(ctx, t, c, instance{service: svc, id: "e2", port: 9002})
	w.Stop() // idempotent
	if w.Queries() != n {
		t.Errorf("queries after Stop")
	}

	// A context that ends stops the loop too.
	cctx, cancel := context.WithCancel(ctx)
	w2 := newWatcher(t, Config{Address: agent.Addr(), Service: svc, WaitTime: time.Minute}, opts)
	if err := w2.Start(cctx); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-w2.done:
	case <-time.After(5 * time.Second):
		t.Fatal("the loop outlived its context")
	}
}
