package affinity

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

// These are the scenarios of the acceptance list, at the level of
// this package: balancers are rings and views of the loads, not processes.

// shuffled returns a copy of ids in a random order.
func shuffled(ids []string, seed uint64) []string {
	out := slices.Clone(ids)
	rand.New(rand.NewPCG(seed, seed)).Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

// tenEach returns keys keys with ten connections each, in random order.
func tenEach(keys int, seed uint64) []string {
	var out []string
	for k := range keys {
		for range 10 {
			out = append(out, fmt.Sprint("room-", k))
		}
	}
	rand.New(rand.NewPCG(seed, 1)).Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func TestTwoBalancersKeepMostConnectionsOnTheirKeysMainBackend(t *testing.T) {
	// 1,000 connections over 100 keys through two balancers in turn, all
	// held, five backends.
	ids := backendIDs("chat", 5)
	rings := []*Ring{mustRing(t, ids), mustRing(t, shuffled(ids, 1))}
	for _, tc := range []struct {
		name string
		opt  Options
	}{
		{"default", Options{}},
		{"floor 8", Options{MinBound: 8}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range uint64(5) {
				p := fill(t, rings, tenEach(100, seed), tc.opt)
				limit := int64(math.Ceil(1.25*float64(p.conns)/5)) + 1
				t.Logf("seed %d: loads %v, %.1f%% on main, %.0f%% of keys on one backend", seed, p.loads, 100*p.mainShare(), 100*p.togetherShare())
				if p.maxLoad() > limit {
					t.Errorf("seed %d: a backend holds %d, over ⌈1.25·avg⌉ + 1 = %d", seed, p.maxLoad(), limit)
				}
				if p.mainShare() < 0.8 {
					t.Errorf("seed %d: %.1f%% of connections on their key's main backend, want ≥ 80%%", seed, 100*p.mainShare())
				}
			}
		})
	}
	for k := range 100 {
		key := fmt.Sprint("room-", k)
		if a, b := rings[0].ID(rings[0].Owner(key)), rings[1].ID(rings[1].Owner(key)); a != b {
			t.Errorf("balancers disagree on %s's main backend: %s and %s", key, a, b)
		}
	}
}

func TestHotKeySpillsAlongTheRingThroughEveryBalancer(t *testing.T) {
	// A key holding 40% of 600 connections, the rest spread over 99 keys,
	// through two balancers in turn, five backends. Each balancer knows the
	// loads as of its last report plus its own connections since (scaled by
	// its share of the traffic, or not), reports arriving every sync opens.
	const backends, conns, balancers = 5, 600, 2
	ids := backendIDs("chat", backends)
	for _, tc := range []struct {
		name  string
		sync  int     // opens between reports
		scale float64 // own change since the report × this
	}{
		{"exact loads", 1, 1},
		{"reports every 10 opens", 10, 1},
		{"reports every 50 opens", 50, 1},
		{"reports every 50 opens, own change scaled by share", 50, balancers},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rings := []*Ring{mustRing(t, ids), mustRing(t, shuffled(ids, 2))}
			rnd := rand.New(rand.NewPCG(3, 3))
			keys := make([]string, conns)
			for i := range keys {
				keys[i] = "hot"
				if i >= conns*4/10 {
					keys[i] = fmt.Sprint("room-", rnd.IntN(99))
				}
			}
			rnd.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })

			loads := map[string]int64{}                     // true, by ID
			reported := make([]map[string]int64, balancers) // as of the last report
			own := make([]map[string]int64, balancers)      // since the last report
			used := make([][]string, balancers)             // backends the hot key went to
			for b := range balancers {
				reported[b], own[b] = map[string]int64{}, map[string]int64{}
			}
			for i, key := range keys {
				if i%tc.sync == 0 {
					for b := range balancers {
						reported[b], own[b] = maps(loads), map[string]int64{}
					}
				}
				b := i % balancers
				r := rings[b]
				cands := candidatesOf(r)
				for j := range cands {
					id := r.ID(j)
					cands[j].Load = reported[b][id] + int64(math.Round(tc.scale*float64(own[b][id])))
				}
				c, ok := r.Pick(key, cands, Options{})
				if !ok {
					t.Fatal("no pick")
				}
				id := r.ID(c.Index)
				loads[id]++
				own[b][id]++
				if key == "hot" && !slices.Contains(used[b], id) {
					used[b] = append(used[b], id)
				}
			}
			top := int64(0)
			for _, l := range loads {
				top = max(top, l)
			}
			limit := int64(math.Ceil(1.25*conns/backends)) + 1
			t.Logf("loads %v; hot key on %v and %v", loads, used[0], used[1])
			if top > limit {
				t.Errorf("a backend holds %d, over ⌈1.25·avg⌉ + 1 = %d", top, limit)
			}
			// Spill follows the ring, so each balancer's set is a start
			// of the same walk: one set contains the other.
			walkIDs := []string{}
			for _, i := range walk(rings[0], "hot") {
				walkIDs = append(walkIDs, rings[0].ID(i))
			}
			for b, set := range used {
				for _, id := range set {
					if slices.Index(walkIDs, id) >= len(set) {
						t.Errorf("balancer %d sent the hot key to %v, not a start of the ring walk %v", b, set, walkIDs)
						break
					}
				}
			}
			if len(used[0]) == backends || len(used[1]) == backends {
				t.Errorf("the hot key spread over every backend")
			}
		})
	}
}

func maps(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func TestOneBackendJoiningOrLeavingMovesFewKeys(t *testing.T) {
	// 10 backends, 500 keys, one connection per key.
	const keys = 500
	ten := backendIDs("chat", 10)
	for _, tc := range []struct {
		name          string
		before, after []string
		held          bool    // all 500 held, else each closed before the next opens
		maxMoved      float64 // share of the keys not on a leaving backend
	}{
		{"one leaves, one connection at a time", ten, append(slices.Clone(ten[:3]), ten[4:]...), false, 0.15},
		{"one joins, one connection at a time", ten, backendIDs("chat", 11), false, 0.15},
		{"one leaves, all held", ten, append(slices.Clone(ten[:3]), ten[4:]...), true, 0.35},
		{"one joins, all held", ten, backendIDs("chat", 11), true, 0.35},
	} {
		t.Run(tc.name, func(t *testing.T) {
			place := func(ids []string) map[string]string {
				r := mustRing(t, ids)
				cands := candidatesOf(r)
				at := map[string]string{}
				for k := range keys {
					key := fmt.Sprint("room-", k)
					c, ok := r.Pick(key, cands, Options{})
					if !ok {
						t.Fatal("no pick")
					}
					if tc.held {
						cands[c.Index].Load++
					}
					at[key] = r.ID(c.Index)
				}
				return at
			}
			before, after := place(tc.before), place(tc.after)
			left := symmetricDifference(tc.before, tc.after)
			moved, stayed := 0, 0
			for key, was := range before {
				if was == left && len(tc.after) < len(tc.before) {
					continue // its backend left: it has to move
				}
				stayed++
				if after[key] != was {
					moved++
				}
			}
			share := float64(moved) / float64(stayed)
			t.Logf("%.1f%% of the %d keys not on a leaving backend moved", 100*share, stayed)
			if share > tc.maxMoved {
				t.Errorf("%.1f%% of keys moved, want ≤ %.0f%%", 100*share, 100*tc.maxMoved)
			}
		})
	}
}

func TestPickFillsCapacitiesInProportionOnAWeightedRing(t *testing.T) {
	// 700 connections of 700 keys on backends of capacities 4:2:1. The
	// bound is weighted either way; the keys follow the weights only when
	// the ring does.
	ids := []string{"big", "mid", "small"}
	weights := []float64{4, 2, 1}
	want := []float64{400, 200, 100}
	for _, tc := range []struct {
		name      string
		weighted  bool
		tolerance float64
	}{
		{"weighted ring", true, 0.25},
		{"plain ring", false, 0.75},
	} {
		t.Run(tc.name, func(t *testing.T) {
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
			main := 0
			for k := range 700 {
				c, _ := r.Pick(fmt.Sprint("room-", k), cands, Options{})
				cands[c.Index].Load++
				if c.Main {
					main++
				}
			}
			t.Logf("loads %d:%d:%d, %.0f%% on main", cands[0].Load, cands[1].Load, cands[2].Load, float64(main)/7)
			for i, w := range want {
				got := float64(cands[i].Load)
				if got > 1.25*w+1 || got < (1-tc.tolerance)*w {
					t.Errorf("%s holds %.0f, want %.0f, at most 1.25× and at least %.0f%% of it", ids[i], got, w, 100*(1-tc.tolerance))
				}
			}
		})
	}
}
