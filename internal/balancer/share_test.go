package balancer

import (
	"testing"
	"time"
)

// The estimator's scale is the reported growth over this process's own
// assignments in the same intervals, within [1, shareMaxScale], and is
// applied to what every backend still holds.
func TestShareEstimator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		own       int   // assignments to the first backend between its reports
		growth    int64 // the first backend's reported growth meanwhile
		wantScale float64
	}{
		{"alone: the report shows only our own", 100, 100, 1},
		{"two balancers", 100, 200, 2},
		{"four balancers", 100, 400, 4},
		{"churn: closes outweigh opens", 100, -50, 1},
		{"too few of our own to tell", 10, 80, 1},
		{"capped", 30, 3000, shareMaxScale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock()
			ups := staticUpstreams(t, clk, "10.0.0.1:1", "10.0.0.2:1")
			for _, u := range ups {
				u.ObserveReport(Report{Connections: 1000, Capacity: 0, Version: 1}, clk.Now())
			}
			e := newAssignShare()
			e.observe(ups) // the reports intervals are measured from
			clk.Advance(time.Second)
			for range tt.own {
				ups[0].assigned.add(5*time.Second, time.Hour)
				ups[1].assigned.add(5*time.Second, time.Hour)
			}
			clk.Advance(time.Second)
			ups[0].ObserveReport(Report{Connections: 1000 + tt.growth, Capacity: 0, Version: 2}, clk.Now())
			e.observe(ups)
			if e.scale != tt.wantScale {
				t.Fatalf("scale %v, want %v", e.scale, tt.wantScale)
			}
			// The second backend has not reported: everything it holds
			// stands for the scale's worth of assignments.
			want := 1000 + int64(float64(tt.own)*tt.wantScale+0.999)
			if got := ups[1].Load(); got != want {
				t.Errorf("second backend's load %d, want %d", got, want)
			}
		})
	}
}

// In proxy mode the share comes from the baselines: a backend whose report
// grew by 40 while this balancer's own connections to it grew by 20 means
// two balancers' worth of traffic, so the connections opened since a stale
// report count twice; an interval with none of this balancer's own (clients
// connecting directly) leaves the estimate alone.
func TestLiveShareScalesConnectionsSinceTheReport(t *testing.T) {
	t.Parallel()
	fresh, stale, ups, e := liveShareFromZero("fresh", "stale")

	// Direct clients of the fresh backend: growth without own traffic.
	reportNow(fresh, 60, 2)
	e.observe(ups)
	if l := stale.Load(); l != 0 || e.scale > 1 {
		t.Fatalf("after direct growth: scale %v, stale load %d; want 1, 0", e.scale, l)
	}

	// A burst through two balancers: this one opens 10 to each backend;
	// the fresh backend reports its 60 + both balancers' 20.
	fresh.addLive(10)
	stale.addLive(10)
	reportNow(fresh, 80, 3)
	e.observe(ups)
	if e.scale != 2 {
		t.Fatalf("scale = %v, want 2 (grew 20 for 10 of ours)", e.scale)
	}
	if l := stale.Load(); l != 20 {
		t.Errorf("stale backend's load = %d, want 10 of ours scaled to 20", l)
	}
	if l := fresh.Load(); l != 80 {
		t.Errorf("fresh backend's load = %d, want its report, 80", l)
	}
}

// The first report to land inside a burst already sets the scale, though
// it holds only a few of this balancer's connections: otherwise that
// backend alone would carry the other balancers' part, and every balancer
// would turn to the backends that have not reported.
func TestLiveShareBelievesAnEarlySmallReport(t *testing.T) {
	t.Parallel()
	early, late, ups, e := liveShareFromZero("early", "late")

	// 6 of ours to each; the early backend reports them with another
	// balancer's 6.
	early.addLive(6)
	late.addLive(6)
	reportNow(early, 12, 2)
	e.observe(ups)
	if e.scale != 2 {
		t.Fatalf("scale = %v, want 2 (grew 12 for 6 of ours)", e.scale)
	}
	if a, b := early.Load(), late.Load(); a != b {
		t.Errorf("loads early %d, late %d: want them equal, both holding two balancers' 6", a, b)
	}
}

// liveShareFromZero returns two backends named after their IDs that have
// reported 0 connections (version 1), and a proxy-mode share estimator that
// has taken those reports in: the start of every interval it measures.
func liveShareFromZero(first, second string) (a, b *Backend, ups []*Upstream, e *shareEstimator) {
	a, b = NewBackend(first+":1"), NewBackend(second+":1")
	ups = []*Upstream{{Backend: a, ID: first}, {Backend: b, ID: second}}
	reportNow(a, 0, 1)
	reportNow(b, 0, 1)
	e = newLiveShare()
	e.observe(ups)
	return a, b, ups, e
}

// reportNow has b report connections, taken and received now.
func reportNow(b *Backend, connections int64, version uint64) {
	now := time.Now()
	b.ObserveReport(Report{Connections: connections, Version: version, TakenAt: now}, now)
}
