package balancer

import (
	"fmt"
	"testing"
	"time"
)

func upstreamsWithLoads(loads ...int64) []*Upstream {
	ups := make([]*Upstream, len(loads))
	for i, l := range loads {
		b := NewBackend(string(rune('a' + i)))
		b.live.Store(l)
		ups[i] = &Upstream{Backend: b, ID: b.Addr()}
	}
	return ups
}

func TestLeastLoaded(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		loads   []int64
		setup   func(ups []*Upstream)
		want    []string // acceptable picks; nil means none
		skipIdx int      // -1: no skip
	}{
		{"empty", nil, nil, nil, -1},
		{"single", []int64{5}, nil, []string{"a"}, -1},
		{"lowest wins", []int64{5, 2, 7}, nil, []string{"b"}, -1},
		{"ties random among lowest", []int64{1, 3, 1}, nil, []string{"a", "c"}, -1},
		{"down skipped", []int64{0, 5}, func(u []*Upstream) { u[0].MarkDown(now, time.Minute) }, []string{"b"}, -1},
		{"draining skipped", []int64{0, 5}, func(u []*Upstream) { u[0].DrainAnnounced = true }, []string{"b"}, -1},
		{"full skipped", []int64{3, 5}, func(u []*Upstream) { u[0].MaxConns = 3 }, []string{"b"}, -1},
		{"all full", []int64{3, 3}, func(u []*Upstream) { u[0].MaxConns, u[1].MaxConns = 3, 2 }, nil, -1},
		{"reported capacity caps", []int64{0, 5}, func(u []*Upstream) { u[0].ObserveReport(Report{Connections: 10, Capacity: 10, Version: 1}, now) }, []string{"b"}, -1},
		{"reported load counts", []int64{0, 5}, func(u []*Upstream) { u[0].ObserveReport(Report{Connections: 50, Capacity: 0, Version: 1}, now) }, []string{"b"}, -1},
		{"expired mark is healthy", []int64{0, 5}, func(u []*Upstream) { u[0].MarkDown(now.Add(-time.Hour), time.Minute) }, []string{"a"}, -1},
		{"skip tried", []int64{0, 5}, nil, []string{"b"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ups := upstreamsWithLoads(tc.loads...)
			if tc.setup != nil {
				tc.setup(ups)
			}
			var skip func(*Upstream) bool
			if tc.skipIdx >= 0 {
				skip = func(u *Upstream) bool { return u == ups[tc.skipIdx] }
			}
			seen := map[string]int{}
			for range 200 {
				got := LeastLoaded(ups, now, skip)
				if got == nil {
					seen[""]++
					continue
				}
				seen[got.ID]++
			}
			if tc.want == nil {
				if len(seen) != 1 || seen[""] != 200 {
					t.Fatalf("picked %v, want none", seen)
				}
				return
			}
			for id := range seen {
				if !contains(tc.want, id) {
					t.Fatalf("picked %q (%v), want one of %v", id, seen, tc.want)
				}
			}
			if len(tc.want) > 1 && len(seen) != len(tc.want) {
				t.Fatalf("ties not broken at random: picks %v", seen)
			}
		})
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Ties must spread evenly, not favour list order.
func TestLeastLoadedTiesUniform(t *testing.T) {
	ups := upstreamsWithLoads(0, 0, 0, 0)
	counts := map[string]int{}
	const n = 40000
	for range n {
		counts[LeastLoaded(ups, time.Now(), nil).ID]++
	}
	for id, c := range counts {
		if c < n/4*9/10 || c > n/4*11/10 {
			t.Errorf("%s picked %d times of %d, want about %d", id, c, n, n/4)
		}
	}
}

func TestTwoChoices(t *testing.T) {
	now := time.Now()
	if TwoChoices(nil, now, nil) != nil {
		t.Fatal("picked from nothing")
	}
	ups := upstreamsWithLoads(100, 0)
	for range 100 {
		if got := TwoChoices(ups, now, nil); got.ID != "b" {
			t.Fatalf("two choices of two picked the more loaded %s", got.ID)
		}
	}
	// With many backends the most loaded one is never picked.
	ups = upstreamsWithLoads(9, 1, 2, 3, 4)
	for range 1000 {
		if got := TwoChoices(ups, now, nil); got.ID == "a" {
			t.Fatal("picked the most loaded backend")
		}
	}
}

func TestLoadWithReports(t *testing.T) {
	now := time.Now()
	b := NewBackend("x")
	b.live.Store(3)
	if b.Load() != 3 {
		t.Fatalf("load without report %d, want own 3", b.Load())
	}
	b.ObserveReport(Report{Connections: 40, Capacity: 100, Version: 7}, now) // includes our 3
	if b.Load() != 40 {
		t.Fatalf("load right after report %d, want 40", b.Load())
	}
	b.live.Add(2) // two more opened since the report
	if b.Load() != 42 {
		t.Fatalf("load %d, want report 40 + 2 opened since", b.Load())
	}
	b.ObserveReport(Report{Connections: 40, Capacity: 100, Version: 7}, now) // same report seen again: baseline kept
	if b.Load() != 42 {
		t.Fatalf("repeated report moved load to %d", b.Load())
	}
	b.live.Add(-5) // all of ours closed
	if b.Load() != 37 {
		t.Fatalf("load %d, want 37", b.Load())
	}
	b.ObserveReport(Report{Connections: 0, Capacity: 0, Version: 8}, now)
	b.live.Add(-1)
	if b.Load() != 0 {
		t.Fatalf("load %d, must not go below zero", b.Load())
	}
	b.ForgetReport()
	if b.Capacity() != 0 {
		t.Fatal("capacity kept after ForgetReport")
	}
}

func BenchmarkLeastLoaded(b *testing.B) {
	for _, n := range []int{3, 30, 300} {
		loads := make([]int64, n)
		for i := range loads {
			loads[i] = int64(i % 7)
		}
		ups := upstreamsWithLoads(loads...)
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			now := time.Now()
			for b.Loop() {
				LeastLoaded(ups, now, nil)
			}
		})
	}
}
