package balancer

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for recentCount and Assigner tests.
type fakeClock struct{ ns atomic.Int64 }

func newFakeClock() *fakeClock {
	c := new(fakeClock)
	c.ns.Store(recentEpoch.Add(time.Hour).UnixNano())
	return c
}

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func TestRecentCountHoldsAndLapses(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := recentCount{now: clk.Now}
	if n := c.count(); n != 0 {
		t.Fatalf("empty count = %d", n)
	}
	c.add(time.Second, time.Second)
	clk.Advance(500 * time.Millisecond)
	c.add(time.Second, time.Second)
	c.add(time.Second, time.Second)
	if n := c.count(); n != 3 {
		t.Fatalf("count after 3 adds = %d, want 3", n)
	}
	clk.Advance(400 * time.Millisecond)
	if n := c.count(); n != 3 {
		t.Fatalf("count within the hold = %d, want 3", n)
	}
	// The first lapses within one resolution step after its hold.
	clk.Advance(100*time.Millisecond + recentResolution)
	if n := c.count(); n != 2 {
		t.Fatalf("count after the first hold = %d, want 2", n)
	}
	clk.Advance(500 * time.Millisecond)
	if n := c.count(); n != 0 {
		t.Fatalf("count after every hold = %d, want 0", n)
	}
}

// A report taken in at least the lag after an assignment ends its hold;
// one taken in sooner may predate the client's connection and does not.
func TestRecentCountReportsEndHolds(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := recentCount{now: clk.Now}
	const hold, lag = 5 * time.Second, time.Second
	c.add(hold, lag)
	clk.Advance(700 * time.Millisecond)
	c.add(hold, lag)
	c.reported(clk.Now(), 0) // 700 ms after the first: within the lag
	if n := c.count(); n != 2 {
		t.Fatalf("count after an early report = %d, want 2", n)
	}
	clk.Advance(600 * time.Millisecond)
	c.reported(clk.Now(), 0) // 1.3 s after the first, 0.6 s after the second
	if n := c.count(); n != 1 {
		t.Fatalf("count after a report 1.3s and 0.6s after the assignments = %d, want 1", n)
	}
	c.add(hold, lag)
	clk.Advance(lag + recentResolution)
	c.reported(clk.Now().Add(-time.Minute), 0) // an older report changes nothing
	if n := c.count(); n != 2 {
		t.Fatalf("count after a stale report = %d, want 2", n)
	}
	c.reported(clk.Now(), 0)
	if n := c.count(); n != 0 {
		t.Fatalf("count after a report past the lag of both = %d, want 0", n)
	}
}

func TestRecentCountRemove(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := recentCount{now: clk.Now}
	a := c.add(time.Second, time.Second)
	c.add(time.Second, time.Second)
	c.remove(a)
	if n := c.count(); n != 1 {
		t.Fatalf("count after remove = %d, want 1", n)
	}
	clk.Advance(2 * time.Second)
	c.remove(a) // lapsed: nothing to take back
	c.add(5*time.Second, time.Second)
	c.remove(a)
	if n := c.count(); n != 1 {
		t.Fatalf("removing a lapsed ticket changed the count: %d, want 1", n)
	}
}

func TestRecentCountLongGapAndLongHold(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := recentCount{now: clk.Now}
	for range 10 {
		c.add(7*time.Second, time.Second)
		clk.Advance(333 * time.Millisecond)
	}
	clk.Advance(time.Hour) // far more than the ring spans
	if n := c.count(); n != 0 {
		t.Fatalf("count after an hour = %d, want 0", n)
	}
	c.add(time.Hour, time.Hour) // cut to MaxAssignHold
	clk.Advance(MaxAssignHold - time.Second)
	if n := c.count(); n != 1 {
		t.Fatalf("count within MaxAssignHold = %d, want 1", n)
	}
	clk.Advance(time.Second + recentResolution)
	if n := c.count(); n != 0 {
		t.Fatalf("count after MaxAssignHold = %d, want 0", n)
	}
}

func TestRecentCountClockBackwards(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	c := recentCount{now: clk.Now}
	c.add(time.Second, time.Second)
	clk.Advance(-10 * time.Second)
	c.add(time.Second, time.Second) // lands in a slot still counted
	if n := c.count(); n != 2 {
		t.Fatalf("count = %d, want 2", n)
	}
	clk.Advance(10*time.Second + time.Second + recentResolution)
	if n := c.count(); n != 0 {
		t.Fatalf("count after both holds = %d, want 0", n)
	}
}

func TestRecentCountConcurrent(t *testing.T) {
	t.Parallel()
	var c recentCount // real clock
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range 1000 {
				tk := c.add(time.Minute, time.Minute)
				if i%2 == 0 {
					c.remove(tk)
				}
				c.count()
			}
		})
	}
	wg.Wait()
	if n := c.count(); n != 8*500 {
		t.Fatalf("count = %d, want %d", n, 8*500)
	}
}

// Assignments count on top of reports until a report that must include
// them (taken in at least the lag later); relayed connections still use the
// report's baseline.
func TestLoadHoldsAssignmentsAcrossReports(t *testing.T) {
	t.Parallel()
	clk := newFakeClock()
	b := NewBackend("a:1")
	b.assigned.now = clk.Now
	b.ObserveReport(Report{Connections: 10, Capacity: 0, Version: 1}, clk.Now())
	for range 5 {
		b.assigned.add(5*time.Second, time.Second)
	}
	if l := b.Load(); l != 15 {
		t.Fatalf("load = %d, want 10 reported + 5 assigned", l)
	}
	clk.Advance(300 * time.Millisecond)
	b.ObserveReport(Report{Connections: 12, Capacity: 0, Version: 2}, clk.Now()) // may predate the clients' connections
	if l := b.Load(); l != 17 {
		t.Fatalf("load after an early report = %d, want 12 + 5 still held", l)
	}
	b.addLive(1) // a relayed connection after the report
	if l := b.Load(); l != 18 {
		t.Fatalf("load = %d, want 12 + 1 live + 5 held", l)
	}
	clk.Advance(time.Second)
	b.ObserveReport(Report{Connections: 12, Capacity: 0, Version: 2}, clk.Now()) // the same report seen again: ignored
	if l := b.Load(); l != 18 {
		t.Fatalf("load after a repeated report = %d, want 18", l)
	}
	b.ObserveReport(Report{Connections: 16, Capacity: 0, Version: 3}, clk.Now()) // includes the assignments and the relayed one
	if l := b.Load(); l != 16 {
		t.Fatalf("load after a report past the lag = %d, want 16", l)
	}
	if s := b.Stats(clk.Now()); s.AssignedNow != 0 || s.Load != 16 {
		t.Fatalf("stats = %+v", s)
	}
}

// A report that grew by g covers this process's oldest g/scale held
// assignments at once, whole 100 ms slots of them, even when they are
// younger than the lag: their clients are in the report.
func TestRecentCountCoveredByGrowth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		scale  float64
		growth int64
		want   int64 // still counted
	}{
		{"no growth: only the lag covers", 1, 0, 30},
		{"growth covers the two oldest slots", 1, 20, 10},
		{"growth covering a slot and a half covers one", 1, 15, 20},
		{"two balancers: half the growth is ours", 2, 40, 10},
		{"growth beyond what is held covers it all", 1, 1000, 0},
		{"shrinking count covers nothing", 1, -50, 30},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock()
			c := recentCount{now: clk.Now}
			c.setScale(tt.scale)
			const hold, lag = 5 * time.Second, time.Second
			for range 3 { // 10 assignments in each of 3 slots
				for range 10 {
					c.add(hold, lag)
				}
				clk.Advance(recentResolution)
			}
			c.reported(clk.Now(), tt.growth) // 300 ms after the first: within the lag
			if n := c.count(); n != tt.want {
				t.Fatalf("count %d, want %d", n, tt.want)
			}
		})
	}
}
