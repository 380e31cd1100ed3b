package affinity

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// walk returns the distinct members in the order key meets them clockwise:
// where its connections go as backend after backend reaches its bound.
func walk(r *Ring, key string) []int {
	var order []int
	k := r.search(hashKey(key))
	for range len(r.points) {
		if i := int(r.owners[k]); !slices.Contains(order, i) {
			order = append(order, i)
		}
		k = (k + 1) % len(r.points)
	}
	return order
}

// candidatesOf returns every member of r, eligible, with the given loads
// (missing ones 0).
func candidatesOf(r *Ring, loads ...int64) []Candidate {
	cands := make([]Candidate, r.Len())
	for i := range cands {
		cands[i] = Candidate{ID: r.ID(i), Eligible: true}
		if i < len(loads) {
			cands[i].Load = loads[i]
		}
	}
	return cands
}

func TestPickNeverExceedsTheBound(t *testing.T) {
	for _, tc := range []struct {
		name     string
		backends int
		opt      Options
		weight   func(i int) float64 // nil: unweighted
		weighted bool                // weighted ring
	}{
		{"paper's algorithm, c=1.25", 10, Options{}, nil, false},
		{"tight factor c=1.1", 10, Options{BalanceFactor: 1.1}, nil, false},
		{"loose factor c=2", 10, Options{BalanceFactor: 2}, nil, false},
		{"50 backends", 50, Options{}, nil, false},
		{"two backends", 2, Options{}, nil, false},
		{"one backend", 1, Options{}, nil, false},
		{"floor on the bound", 10, Options{MinBound: 4}, nil, false},
		{"capacities 4:2:1 on a plain ring", 9, Options{}, func(i int) float64 { return float64(int(1) << (i % 3)) }, false},
		{"capacities 4:2:1 on a weighted ring", 9, Options{}, func(i int) float64 { return float64(int(1) << (i % 3)) }, true},
		{"some capacities unknown", 10, Options{}, func(i int) float64 { return float64(i % 3 * 1000) }, false},
		{"own bound too", 10, Options{OwnBound: true}, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(3, 4))
			zipf := rand.NewZipf(rnd, 1.1, 1, 999)
			ids := backendIDs("chat", tc.backends)
			weights := make([]float64, len(ids))
			if tc.weight != nil {
				for i := range weights {
					weights[i] = tc.weight(i)
				}
			}
			r := mustRing(t, ids)
			if tc.weighted {
				var err error
				if r, err = NewWeightedRing(ids, weights); err != nil {
					t.Fatal(err)
				}
			}
			cands := candidatesOf(r)
			for i := range cands {
				cands[i].Weight = weights[i]
			}
			var open []int // backend of each open connection
			var bounds []int64
			for step := range 10000 {
				// Two opens to one close: the fleet fills, with churn.
				if len(open) > 0 && rnd.IntN(3) == 0 {
					j := rnd.IntN(len(open))
					cands[open[j]].Load--
					cands[open[j]].Own = min(cands[open[j]].Own, cands[open[j]].Load)
					open[j] = open[len(open)-1]
					open = open[:len(open)-1]
					continue
				}
				// A backend now and then goes down and comes back.
				if rnd.IntN(500) == 0 {
					d := &cands[rnd.IntN(len(cands))]
					if d.Eligible = !d.Eligible; viewOf(cands).n == 0 {
						d.Eligible = true // keep one up
					}
				}
				bounds = Bounds(cands, tc.opt, bounds)
				c, ok := r.Pick(fmt.Sprint("room-", zipf.Uint64()), cands, tc.opt)
				if !ok {
					t.Fatalf("step %d: no pick", step)
				}
				if c.Bound != bounds[c.Index] {
					t.Fatalf("step %d: Pick says bound %d, Bounds says %d", step, c.Bound, bounds[c.Index])
				}
				if !cands[c.Index].Eligible {
					t.Fatalf("step %d: picked ineligible backend %d", step, c.Index)
				}
				cands[c.Index].Load++
				if rnd.IntN(3) == 0 { // a third of the connections are this balancer's own
					cands[c.Index].Own++
				}
				if l := cands[c.Index].Load; l > c.Bound {
					t.Fatalf("step %d: backend %d holds %d, over its bound %d", step, c.Index, l, c.Bound)
				}
				open = append(open, c.Index)
			}
		})
	}
}

func TestPickSendsEachKeyToItsOwnerWhileBelowTheBound(t *testing.T) {
	r := mustRing(t, backendIDs("chat", 20))
	cands := candidatesOf(r)
	for k := range 1000 {
		key := fmt.Sprint("room-", k)
		c, ok := r.Pick(key, cands, Options{})
		if !ok || c.Index != r.Owner(key) || !c.Main {
			t.Fatalf("key %q: Pick = %+v, %v; want its owner %d as main", key, c, ok, r.Owner(key))
		}
	}
}

func TestPickSkipsIneligibleBackends(t *testing.T) {
	r := mustRing(t, backendIDs("chat", 5))
	order := walk(r, "room")
	for _, tc := range []struct {
		name      string
		setup     func(c []Candidate)
		want      int // index into order; -1: no pick
		wantMain  bool
		wantBound int64
	}{
		{"all up, empty", func(c []Candidate) {}, 0, true, 1},
		{"owner down: next is main", func(c []Candidate) { c[order[0]].Eligible = false }, 1, true, 1},
		{"owner and next down", func(c []Candidate) { c[order[0]].Eligible, c[order[1]].Eligible = false, false }, 2, true, 1},
		{"owner full: spill", func(c []Candidate) { c[order[0]].Load = 1 }, 1, false, 1},
		{
			// 100 connections on a draining backend count neither in
			// the total nor in n: the others' bound is ⌈1.25·1/4⌉ = 1.
			"draining load not counted",
			func(c []Candidate) { c[order[4]].Load, c[order[4]].Eligible = 100, false },
			0, true, 1,
		},
		{"all down", func(c []Candidate) {
			for i := range c {
				c[i].Eligible = false
			}
		}, -1, false, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cands := candidatesOf(r)
			tc.setup(cands)
			c, ok := r.Pick("room", cands, Options{})
			if tc.want < 0 {
				if ok {
					t.Fatalf("Pick = %+v, want none", c)
				}
				return
			}
			if !ok || c.Index != order[tc.want] || c.Main != tc.wantMain || c.Bound != tc.wantBound {
				t.Errorf("Pick = %+v, %v; want index %d, main %v, bound %d", c, ok, order[tc.want], tc.wantMain, tc.wantBound)
			}
		})
	}
}

func TestPickKeepsOwnConnectionsUnderTheOwnBound(t *testing.T) {
	r := mustRing(t, backendIDs("chat", 4))
	order := walk(r, "room")
	even := []int64{10, 10, 10, 10} // global bound ⌈1.25·41/4⌉ = 13
	for _, tc := range []struct {
		name     string
		opt      Options
		loads    []int64 // by position on the key's walk
		own      []int64 // of 8 in all: own bound ⌈1.25·9/4⌉ = 3
		want     int     // position on the walk
		wantMain bool
	}{
		{"own bound off", Options{}, even, []int64{5, 1, 1, 1}, 0, true},
		{"own count below its bound", Options{OwnBound: true}, even, []int64{2, 2, 2, 2}, 0, true},
		{"own count at its bound: spill", Options{OwnBound: true}, even, []int64{5, 1, 1, 1}, 1, false},
		{"first two at their own bound", Options{OwnBound: true}, even, []int64{3, 3, 1, 1}, 2, false},
		{
			// Global bound ⌈1.25·61/4⌉ = 20: the last two are over it,
			// the first two at their own bound, ⌈1.25·11/4⌉ = 4.
			"none within both: the first within the global bound",
			Options{OwnBound: true}, []int64{10, 10, 20, 20}, []int64{5, 5, 0, 0}, 0, true,
		},
		{"floor lifts the own bound", Options{OwnBound: true, MinBound: 6}, even, []int64{5, 1, 1, 1}, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cands := candidatesOf(r)
			for pos, i := range order {
				cands[i].Load, cands[i].Own = tc.loads[pos], tc.own[pos]
			}
			c, ok := r.Pick("room", cands, tc.opt)
			if !ok || c.Index != order[tc.want] || c.Main != tc.wantMain {
				t.Errorf("Pick = %+v, %v; want index %d, main %v", c, ok, order[tc.want], tc.wantMain)
			}
		})
	}
}

func TestPickSpillsAHotKeyToTheSameNextBackend(t *testing.T) {
	ids := backendIDs("chat", 10)
	reversed := slices.Clone(ids)
	slices.Reverse(reversed)
	// Two balancers with their members in different orders fill the same
	// loads; the hot key's successive backends must be the same IDs.
	var got [2][]string
	for b, members := range [][]string{ids, reversed} {
		r := mustRing(t, members)
		cands := candidatesOf(r)
		for i := range cands {
			cands[i].Load = 100
		}
		var used []string
		for range 3000 {
			c, ok := r.Pick("hot", cands, Options{})
			if !ok {
				t.Fatal("no pick")
			}
			cands[c.Index].Load++
			if id := r.ID(c.Index); !slices.Contains(used, id) {
				used = append(used, id)
			}
		}
		// The backends used are the first ones of the key's walk.
		order := walk(r, "hot")
		for j, id := range used {
			if r.ID(order[j]) != id {
				t.Fatalf("balancer %d: backends used %v are not the start of the ring walk", b, used)
			}
		}
		got[b] = used
	}
	if !slices.Equal(got[0], got[1]) {
		t.Errorf("hot key spilled to %v on one balancer, %v on the other", got[0], got[1])
	}
	if len(got[0]) < 2 || len(got[0]) == len(ids) {
		t.Errorf("hot key used %d of %d backends, want it spread over some but not all", len(got[0]), len(ids))
	}
}

func TestPickAllocatesNothing(t *testing.T) {
	r := mustRing(t, backendIDs("chat", 100))
	cands := candidatesOf(r)
	allocs := testing.AllocsPerRun(1000, func() { r.Pick("room-17", cands, Options{}) })
	if allocs != 0 {
		t.Errorf("Pick allocates %v times, want 0", allocs)
	}
}

func TestPickPanicsOnCandidatesNotInRingOrder(t *testing.T) {
	r := mustRing(t, backendIDs("chat", 4))
	for _, tc := range []struct {
		name  string
		cands []Candidate
	}{
		{"too few", candidatesOf(r)[:3]},
		{"another order", func() []Candidate {
			c := candidatesOf(r)
			slices.Reverse(c)
			return c
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			defer func() {
				if p := recover(); p == nil || !strings.Contains(fmt.Sprint(p), "affinity") {
					t.Errorf("panic %v, want one naming the package", p)
				}
			}()
			r.Pick("room", tc.cands, Options{})
		})
	}
}
