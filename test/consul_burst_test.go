package test

// The global count under a burst, on a real Consul agent: connections
// opened through two balancers faster than the backends' reports travel.
// This file uses only the harness's oldest helpers and its own, so that it
// runs unchanged against older commits of the balancer (to measure a
// figure before a fix).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// burstReps is how many times TestConsulBurstThroughTwoBalancersEndsEven
// runs its burst: $WSB_BURST_REPS, default 3 (a few seconds each). The
// burst's outcome depends on when reports land, so more runs find more;
// 20 is the figure to quote.
func burstReps(t *testing.T) int {
	t.Helper()
	s := os.Getenv("WSB_BURST_REPS")
	if s == "" {
		return 3
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		t.Fatalf("WSB_BURST_REPS=%q: want a positive number", s)
	}
	return n
}

// burstResult is one run's outcome.
type burstResult struct {
	held      []int64       // connections per backend at the end
	took      time.Duration // the 120 through the balancers
	reportLag time.Duration // until both balancers had the direct 60 reported
	// reports are the backends' reports in Consul right after the burst
	// (id=count@when taken, relative to the burst's start), and
	// sinceRegistered the time from their start to the burst's.
	reports         []string
	sinceRegistered time.Duration
}

// worst is how far the run's most distant backend is from 60.
func (r burstResult) worst() int64 {
	var w int64
	for _, n := range r.held {
		w = max(w, n-60, 60-n)
	}
	return w
}

// 60 connections are made straight to one of 3 backends and held; once
// both balancers know of them from its report, 120 more go through two
// balancers, alternating, as fast as they go (8 clients at once), and are
// held. Every backend must end within ±10% of 60: each balancer counts
// the reports plus what it opened itself since each report's snapshot, so
// connections opened while a report travelled count once.
//
// The backends are cmd/wsecho processes, registering and reporting through
// the project's library; they and the two Caddy instances are built
// without the race detector, so that the burst is as fast as the machine
// allows even under -race: a slow burst would leave the reports time to
// catch up and hide the error this test is for. Not parallel, for the same
// reason.
func TestConsulBurstThroughTwoBalancersEndsEven(t *testing.T) {
	reps := burstReps(t)
	agent := consuldev.Shared(t)
	var results []burstResult
	for i := range reps {
		t.Run(fmt.Sprintf("run%02d", i+1), func(t *testing.T) {
			svc := fmt.Sprintf("ws-burst-%02d", i+1)
			r := burstRun(t, agent.Addr(), svc)
			results = append(results, r)
			t.Logf("backends hold %v (off by at most %d); the 120 took %s; the direct 60 were reported to both balancers %s after they were open; "+
				"reports in Consul after the burst %v; the burst began %s after the backends started",
				r.held, r.worst(), r.took.Round(time.Millisecond), r.reportLag.Round(time.Millisecond), r.reports, r.sinceRegistered.Round(time.Millisecond))
			for j, n := range r.held {
				if n < 54 || n > 66 {
					t.Errorf("backend %d holds %d connections, want 60 ± 6 (all: %v)", j, n, r.held)
				}
			}
		})
	}
	if len(results) == 0 {
		return
	}
	worst := results[0]
	var within int
	for _, r := range results {
		if r.worst() > worst.worst() {
			worst = r
		}
		if r.worst() <= 6 {
			within++
		}
	}
	t.Logf("%d runs: %d within ±10%%; worst run %v (off by %d)", len(results), within, worst.held, worst.worst())
}

func burstRun(t *testing.T, agentAddr, svc string) burstResult {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	echo := harness.WSEchoBinary(t)
	registered := time.Now()
	addrs := make([]string, 3)
	for i := range addrs {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
		harness.StartProcess(t, addrs[i], echo, "-listen", addrs[i], "-consul", agentAddr,
			"-service", svc, "-id", fmt.Sprintf("%s-%d", svc, i), "-drain-wait", "0s")
	}
	site := fmt.Sprintf("\tws_balancer {\n\t\tconsul {\n\t\t\taddress %s\n\t\t\tservice %s\n\t\t}\n\t}\n\trespond \"plain http\" 200\n", agentAddr, svc)
	bin := harness.CaddyBinaryNoRace(t)
	caddies := []*harness.Caddy{harness.StartCaddyBinary(t, bin, site), harness.StartCaddyBinary(t, bin, site)}
	reported := func(id string, want int64) bool {
		for _, c := range caddies {
			s, err := c.Backends()
			if err != nil {
				return false
			}
			found := false
			for _, b := range s.Backends {
				if b.ID == id && b.Reported != nil && *b.Reported == want {
					found = true
				}
			}
			if !found {
				return false
			}
		}
		return true
	}
	for i := range addrs {
		if !harness.WaitFor(ctx, 30*time.Second, func() bool { return reported(fmt.Sprintf("%s-%d", svc, i), 0) }) {
			t.Fatalf("the balancers do not list backend %d with its report", i)
		}
	}

	var conns burstConns
	t.Cleanup(conns.closeAll)
	for range 60 {
		conns.open(t, ctx, "ws://"+addrs[0]+"/")
	}
	// The library publishes a count that left 0 at once and the rest after
	// its minimum interval (2 s) or, for a last small step, its refresh
	// (30 s): wait for the whole 60.
	opened := time.Now()
	if !harness.WaitFor(ctx, 45*time.Second, func() bool { return reported(svc+"-0", 60) }) {
		t.Fatal("the balancers never had backend 0's 60 connections reported")
	}
	var r burstResult
	r.reportLag = time.Since(opened)

	const n, clients = 120, 8
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= n || ctx.Err() != nil {
					return
				}
				conns.open(t, ctx, caddies[i%2].URL("/"))
			}
		})
	}
	wg.Wait()
	r.took = time.Since(start)
	if t.Failed() {
		t.FailNow()
	}
	// What the balancers last heard from the backends: the report each
	// published once its count left 0 (the next one may not come before
	// the library's minimum interval, 2 s), when it was taken relative to
	// the burst's start, and since when the backend had been registered.
	if entries, _, err := consuldev.NewClient(t, agentAddr, "").Health().Service(svc, "", true, nil); err == nil {
		for _, e := range entries {
			at, _ := strconv.ParseInt(e.Service.Meta["ws_counted_at"], 10, 64)
			rel := "?"
			if at > 0 {
				rel = time.UnixMilli(at).Sub(start).Round(time.Millisecond).String()
			}
			r.reports = append(r.reports, fmt.Sprintf("%s=%s@%s", e.Service.ID[len(svc)+1:], e.Service.Meta["ws_connections"], rel))
		}
	}
	r.sinceRegistered = time.Since(registered) - r.took
	r.held = make([]int64, len(addrs))
	harness.WaitFor(ctx, 10*time.Second, func() bool {
		var sum int64
		for i, a := range addrs {
			r.held[i] = burstLive(t, a)
			sum += r.held[i]
		}
		return sum == 60+n
	})
	return r
}

// burstConns holds the test's connections.
type burstConns struct {
	mu sync.Mutex
	cs []*websocket.Conn
}

// open dials url, checks the connection with an echo and holds it. It
// fails the test with Errorf, as it runs in the burst's goroutines.
func (b *burstConns) open(t *testing.T, ctx context.Context, url string) {
	c, resp, err := harness.Dial(ctx, url, nil)
	if err != nil {
		status := ""
		if resp != nil {
			status = resp.Status
		}
		t.Errorf("dialing %s: %v %s", url, err, status)
		return
	}
	b.mu.Lock()
	b.cs = append(b.cs, c)
	b.mu.Unlock()
	if err := harness.Echo(c, "hi", 10*time.Second); err != nil {
		t.Errorf("echo through %s: %v", url, err)
	}
}

func (b *burstConns) closeAll() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.cs {
		c.Close()
	}
}

// burstLive is the connection count a cmd/wsecho backend gives on /stats.
func burstLive(t *testing.T, addr string) int64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/stats")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var stats struct{ Live int64 }
	if err := json.NewDecoder(resp.Body).Decode(&stats); err != nil {
		t.Fatal(err)
	}
	return stats.Live
}
