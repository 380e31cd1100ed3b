package consul

import (
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// entry is a health entry on node n1 (address 10.0.0.1).
func entry(id, addr string, port int, modify uint64, meta map[string]string) *api.ServiceEntry {
	return &api.ServiceEntry{
		Node:    &api.Node{Node: "n1", Address: "10.0.0.1"},
		Service: &api.AgentService{ID: id, Service: "echo", Address: addr, Port: port, ModifyIndex: modify, Meta: meta},
	}
}

func byID(ups []*balancer.Upstream) map[string]*balancer.Upstream {
	m := make(map[string]*balancer.Upstream)
	for _, u := range ups {
		m[u.ID] = u
	}
	return m
}

func TestSourceConversion(t *testing.T) {
	t.Parallel()
	w := NewWatcher(nil, Config{Service: "echo"}, nil) // fed by hand, never started
	store := newCountingStore()
	now := time.Unix(1000, 0)
	s := NewSource(w, store, &SourceOptions{MaxConns: 100, Now: func() time.Time { return now }})
	defer s.Close()
	if len(s.Upstreams()) != 0 {
		t.Fatal("upstreams before the first answer")
	}

	w.apply([]*api.ServiceEntry{
		entry("full", "10.0.0.2", 8001, 5, map[string]string{
			"ws_connections": "7", "ws_capacity": "50", "ws_url": "wss://public.example/ws", "ws_draining": "true",
		}),
		entry("plain", "", 8002, 6, nil),                                                                  // node address, no report
		entry("capped", "10.0.0.3", 8003, 7, map[string]string{"ws_capacity": "40"}),                      // capacity only
		entry("bad", "10.0.0.4", 8004, 8, map[string]string{"ws_connections": "-1", "ws_url": "ftp://x"}), // malformed
		entry("zdup", "10.0.0.2", 8001, 9, nil),                                                           // same address as "full"
	})
	ups := byID(s.Upstreams())
	if len(ups) != 4 {
		t.Fatalf("got %d upstreams, want 4 (the duplicate address folded): %v", len(ups), slices.Collect(maps.Keys(ups)))
	}

	full := ups["full"]
	if full.Addr() != "10.0.0.2:8001" || full.URL.String() != "ws://10.0.0.2:8001/" {
		t.Errorf("full: addr %s url %s", full.Addr(), full.URL)
	}
	if full.PublicURL != "wss://public.example/ws" || !full.DrainAnnounced || full.MaxConns != 100 {
		t.Errorf("full: public %q draining %v max %d", full.PublicURL, full.DrainAnnounced, full.MaxConns)
	}
	if n, at, ok := full.Reported(); !ok || n != 7 || !at.Equal(now) {
		t.Errorf("full: reported %d at %s (%v), want 7 at %s", n, at, ok, now)
	}
	if full.Capacity() != 50 || full.Limit() != 50 || full.Load() != 7 {
		t.Errorf("full: capacity %d limit %d load %d", full.Capacity(), full.Limit(), full.Load())
	}

	plain := ups["plain"]
	if plain.Addr() != "10.0.0.1:8002" || plain.DrainAnnounced || plain.PublicURL != "" {
		t.Errorf("plain: addr %s draining %v public %q", plain.Addr(), plain.DrainAnnounced, plain.PublicURL)
	}
	if _, _, ok := plain.Reported(); ok {
		t.Error("plain: a report without ws_connections")
	}
	if ups["capped"].MaxConns != 40 {
		t.Errorf("capped: MaxConns %d, want the capacity 40 (lower than max_conns)", ups["capped"].MaxConns)
	}
	bad := ups["bad"]
	if _, _, ok := bad.Reported(); ok || bad.PublicURL != "" {
		t.Error("bad: malformed meta was used")
	}

	// A new report for "full" and "plain" leaving: reports move, the
	// backend of the one that left is released.
	now = now.Add(time.Second)
	w.apply([]*api.ServiceEntry{
		entry("full", "10.0.0.2", 8001, 10, map[string]string{"ws_connections": "9"}),
		entry("capped", "10.0.0.3", 8003, 7, map[string]string{"ws_capacity": "40"}),
	})
	ups = byID(s.Upstreams())
	if len(ups) != 2 || ups["full"].DrainAnnounced {
		t.Fatalf("after the change: %v", slices.Collect(maps.Keys(ups)))
	}
	if n, _, _ := ups["full"].Reported(); n != 9 || ups["full"].Capacity() != 0 {
		t.Errorf("full's new report: %d, capacity %d", n, ups["full"].Capacity())
	}
	wantHeld := map[string]int{"10.0.0.2:8001": 1, "10.0.0.3:8003": 1}
	if got := store.held(); !maps.Equal(got, wantHeld) {
		t.Errorf("held %v, want %v", got, wantHeld)
	}

	// The report goes away with ws_connections.
	w.apply([]*api.ServiceEntry{entry("full", "10.0.0.2", 8001, 11, nil)})
	if _, _, ok := s.Upstreams()[0].Reported(); ok {
		t.Error("report kept after ws_connections went away")
	}

	s.Close()
	if got := store.held(); len(got) != 0 {
		t.Errorf("after Close: held %v", got)
	}
	if len(s.Upstreams()) != 1 {
		t.Error("Close dropped the last set")
	}
	w.apply(nil)
	if len(s.Upstreams()) != 1 || len(store.held()) != 0 {
		t.Error("a closed source still follows the watcher")
	}
	s.Close() // idempotent
}

// Two sources (two handlers with different max_conns) over one watcher
// share the Backends and take each report once.
func TestSourcesShareWatcher(t *testing.T) {
	t.Parallel()
	w := NewWatcher(nil, Config{Service: "echo"}, nil)
	store := newCountingStore()
	a := NewSource(w, store, &SourceOptions{MaxConns: 10})
	w.apply([]*api.ServiceEntry{entry("e1", "10.0.0.2", 8001, 5, map[string]string{"ws_connections": "3"})})
	b := NewSource(w, store, &SourceOptions{MaxConns: 20}) // joins late: gets the current set at once
	ua, ub := a.Upstreams()[0], b.Upstreams()[0]
	if ua.Backend != ub.Backend || ua.MaxConns != 10 || ub.MaxConns != 20 {
		t.Fatalf("sources do not share the backend or mix their limits")
	}
	if store.held()["10.0.0.2:8001"] != 2 {
		t.Errorf("refs %v, want 2", store.held())
	}
	a.Close()
	b.Close()
	if len(store.held()) != 0 {
		t.Errorf("held after Close: %v", store.held())
	}
}

// End to end with a real agent: registrations with the meta protocol
// become upstreams with reports as soon as the watch returns.
func TestSourceWithAgent(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c, svc := sharedAgent(t)
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001, meta: map[string]string{"ws_connections": "4", "ws_capacity": "10"}})
	opts, _ := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	store := newCountingStore()
	s := NewSource(w, store, nil)
	defer s.Close()
	ups := s.Upstreams()
	if len(ups) != 1 || ups[0].Load() != 4 || ups[0].Limit() != 10 || ups[0].ID != svc+"-e1" || ups[0].Addr() != addrOf(9001) {
		t.Fatalf("upstreams after start: %+v", ups)
	}
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001, meta: map[string]string{"ws_connections": "8", "ws_capacity": "10"}})
	eventually(t, 5*time.Second, "the new report", func() bool { return s.Upstreams()[0].Load() == 8 })
	register(ctx, t, c, instance{service: svc, id: "e1", port: 9001, meta: map[string]string{"ws_connections": "10", "ws_capacity": "10"}})
	eventually(t, 5*time.Second, "full", func() bool { return s.Upstreams()[0].Full() })
	if err := c.Agent().ServiceDeregister(svc + "-e1"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "e1 gone", func() bool { return len(s.Upstreams()) == 0 })
	if len(store.held()) != 0 {
		t.Errorf("backend of a gone instance still held: %v", store.held())
	}
}

// Garbage in a backend's meta, registered in a real agent, is logged and
// ignored: the backend counts as one without a report (this balancer's own
// count), neither crashing the watch nor skewing the others' loads.
func TestSourceIgnoresGarbageMeta(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	agent, c, svc := sharedAgent(t)
	garbage := map[string]string{"abc": "abc", "neg": "-5", "huge": "1e99", "blank": " ", "overflow": "99999999999999999999"}
	port := 9101
	for id, v := range garbage {
		register(ctx, t, c, instance{service: svc, id: id, port: port, meta: map[string]string{"ws_connections": v, "ws_capacity": v, "ws_counted_at": v}})
		port++
	}
	register(ctx, t, c, instance{service: svc, id: "good", port: 9100, meta: map[string]string{"ws_connections": "3"}})
	opts, logs := fastOptions()
	w := newWatcher(t, Config{Address: agent.Addr(), Service: svc}, opts)
	if err := w.Start(ctx); err != nil {
		t.Fatal(err)
	}
	s := NewSource(w, newCountingStore(), &SourceOptions{Logger: opts.Logger})
	defer s.Close()
	ups := s.Upstreams()
	if len(ups) != len(garbage)+1 {
		t.Fatalf("%d upstreams, want %d", len(ups), len(garbage)+1)
	}
	for _, u := range ups {
		want := int64(0)
		if strings.HasSuffix(u.ID, "-good") {
			want = 3
		}
		if u.Load() != want || u.Limit() != 0 {
			t.Errorf("%s: load %d, limit %d; want %d, no limit", u.ID, u.Load(), u.Limit(), want)
		}
	}
	if n := logs.FilterMessageSnippet("ignoring malformed meta").Len(); n < len(garbage) {
		t.Errorf("%d warnings for %d garbage registrations", n, len(garbage))
	}
}
