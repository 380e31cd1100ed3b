package affinity

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// placement is where a fill put each connection, and what it says about
// co-location.
type placement struct {
	loads  []int64
	byKey  map[string]map[int]int // key → backend → connections
	onMain int                    // connections on their key's main backend
	conns  int
}

// mainShare is the share of connections on their key's main backend.
func (p *placement) mainShare() float64 { return float64(p.onMain) / float64(p.conns) }

// togetherShare is the share of keys with at least two connections whose
// connections all sit on one backend (a key with one connection is together
// by definition, and would only dilute the figure).
func (p *placement) togetherShare() float64 {
	multi, together := 0, 0
	for _, backends := range p.byKey {
		n := 0
		for _, c := range backends {
			n += c
		}
		if n < 2 {
			continue
		}
		multi++
		if len(backends) == 1 {
			together++
		}
	}
	if multi == 0 {
		return 1
	}
	return float64(together) / float64(multi)
}

// maxLoad is the most loaded backend's load.
func (p *placement) maxLoad() int64 {
	top := int64(0)
	for _, l := range p.loads {
		top = max(top, l)
	}
	return top
}

// maxOverAvg is the most loaded backend's load over the mean load.
func (p *placement) maxOverAvg() float64 {
	return float64(p.maxLoad()) / (float64(p.conns) / float64(len(p.loads)))
}

// fill opens connections for keys one at a time, all held, through
// balancers that take turns and know every backend's load exactly: what the
// algorithm does before any report lag. Each balancer has its own ring, built
// from the members in its own order.
func fill(t testing.TB, rings []*Ring, keys []string, opt Options) *placement {
	t.Helper()
	n := rings[0].Len()
	p := &placement{loads: make([]int64, n), byKey: map[string]map[int]int{}, conns: len(keys)}
	cands := make([][]Candidate, len(rings))
	index := make([]map[string]int, len(rings)) // ID → member index, per ring
	for b, r := range rings {
		cands[b] = candidatesOf(r)
		index[b] = map[string]int{}
		for i := range r.Len() {
			index[b][r.ID(i)] = i
		}
	}
	ref := rings[0]
	for j, key := range keys {
		b := j % len(rings)
		for i := range cands[b] {
			cands[b][i].Load = p.loads[index[0][rings[b].ID(i)]]
		}
		c, ok := rings[b].Pick(key, cands[b], opt)
		if !ok {
			t.Fatal("no pick")
		}
		g := index[0][rings[b].ID(c.Index)] // in ref's numbering
		p.loads[g]++
		if g == ref.Owner(key) {
			p.onMain++
		}
		if p.byKey[key] == nil {
			p.byKey[key] = map[int]int{}
		}
		p.byKey[key][g]++
	}
	return p
}

// zipfKeys draws conns connections' keys from a Zipf law over keys keys, s =
// 1.1: the most popular of 1,000 keys gets 18% of the connections, the
// 100th 0.1%.
func zipfKeys(seed uint64, keys, conns int) []string {
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	z := rand.NewZipf(rnd, 1.1, 1, uint64(keys-1))
	out := make([]string, conns)
	for i := range out {
		out[i] = fmt.Sprintf("s%d-room-%d", seed, z.Uint64())
	}
	return out
}

// uniformKeys draws conns connections' keys uniformly from keys keys.
func uniformKeys(seed uint64, keys, conns int) []string {
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	out := make([]string, conns)
	for i := range out {
		out[i] = fmt.Sprintf("s%d-room-%d", seed, rnd.IntN(keys))
	}
	return out
}

// colocationCell fills backends with 10 connections per key on average and
// averages the co-location figures over three key sets; max ÷ avg is the
// worst of the three.
type colocationCell struct {
	main, together, maxAvg float64
	maxLoad                int64
}

func colocation(t testing.TB, backends, keys int, law func(seed uint64, keys, conns int) []string, opt Options) colocationCell {
	const seeds = 3
	r := mustRing(t, backendIDs("chat", backends))
	var cell colocationCell
	for seed := range uint64(seeds) {
		p := fill(t, []*Ring{r}, law(seed, keys, 10*keys), opt)
		cell.main += p.mainShare() / seeds
		cell.together += p.togetherShare() / seeds
		cell.maxAvg = max(cell.maxAvg, p.maxOverAvg())
		cell.maxLoad = max(cell.maxLoad, p.maxLoad())
	}
	return cell
}

func (c colocationCell) String() string {
	return fmt.Sprintf("%.1f%% · %.0f%% · %.2f", 100*c.main, 100*c.together, c.maxAvg)
}

// checkBound fails unless the fill kept every backend within its final
// bound: ⌈c · (total + 1) / n⌉, or the floor.
func checkBound(t *testing.T, cell colocationCell, backends, conns int, opt Options) {
	t.Helper()
	x := opt.factor() * float64(conns+1) / float64(backends)
	if bound := max(int64(math.Ceil(x-x*1e-12)), opt.MinBound); cell.maxLoad > bound {
		t.Errorf("%d backends, %d connections, %+v: a backend holds %d, over the bound %d", backends, conns, opt, cell.maxLoad, bound)
	}
}

func TestColocationByBalanceFactorAndKeyCount(t *testing.T) {
	const backends = 10
	factors := []float64{1.25}
	keyCounts := []int{100, 1000}
	laws := []struct {
		name string
		keys func(seed uint64, keys, conns int) []string
	}{{"uniform", uniformKeys}}
	if *long {
		factors = []float64{1.1, 1.25, 1.5, 2}
		keyCounts = []int{100, 1000, 10000}
		laws = append(laws, struct {
			name string
			keys func(seed uint64, keys, conns int) []string
		}{"Zipf s=1.1", zipfKeys})
	}
	var table strings.Builder
	for _, law := range laws {
		fmt.Fprintf(&table, "\n%s popularity, %d backends, 10 connections per key on average, all held:\n\n| balance_factor |", law.name, backends)
		for _, k := range keyCounts {
			fmt.Fprintf(&table, " %d keys |", k)
		}
		table.WriteString("\n|---|" + strings.Repeat("---|", len(keyCounts)) + "\n")
		for _, f := range factors {
			fmt.Fprintf(&table, "| %.2f |", f)
			for _, k := range keyCounts {
				opt := Options{BalanceFactor: f}
				cell := colocation(t, backends, k, law.keys, opt)
				checkBound(t, cell, backends, 10*k, opt)
				fmt.Fprintf(&table, " %s |", cell)
				if law.name == "uniform" && f == 1.25 && cell.main < 0.9 {
					t.Errorf("uniform keys, %d keys, c=1.25: %.1f%% on main, want ≥ 90%%", k, 100*cell.main)
				}
			}
			table.WriteString("\n")
		}
	}
	t.Log("cells: connections on their key's main backend · keys (with ≥ 2 connections) all on one backend · max load ÷ average\n", table.String())
}

// steadyCell is what a fleet at a steady, low load looks like, averaged
// over samples; maxLoad and maxAvg are the worst seen.
type steadyCell struct {
	main, together, maxAvg float64
	maxLoad, bound         int64
}

// steady keeps conns connections open on backends, each step closing one at
// random and opening one for a key drawn uniformly from keys, with exact
// loads: the load a fleet sees at quiet hours, when the bound is small.
func steady(t testing.TB, backends, keys, conns, steps int, opt Options) steadyCell {
	r := mustRing(t, backendIDs("chat", backends))
	rnd := rand.New(rand.NewPCG(uint64(keys), uint64(conns)))
	names := make([]string, keys)
	owner := make([]int, keys)
	for k := range names {
		names[k] = fmt.Sprint("room-", k)
		owner[k] = r.Owner(names[k])
	}
	cands := candidatesOf(r)
	type conn struct{ key, backend int }
	var open []conn
	byKey := make([]map[int]int, keys)
	for k := range byKey {
		byKey[k] = map[int]int{}
	}
	var cell steadyCell
	// The fleet fills without the floor: only the steady state is measured,
	// and a floor under the steady bound must change nothing in it.
	fillOpt := Options{BalanceFactor: opt.BalanceFactor}
	add := func() {
		k := rnd.IntN(keys)
		c, _ := r.Pick(names[k], cands, fillOpt)
		cands[c.Index].Load++
		byKey[k][c.Index]++
		open = append(open, conn{k, c.Index})
		cell.maxLoad = max(cell.maxLoad, cands[c.Index].Load)
		cell.bound = max(cell.bound, c.Bound)
	}
	for range conns {
		add()
	}
	fillOpt = opt
	cell.maxLoad, cell.bound = 0, 0 // count from the steady state on
	samples := 0
	for step := range steps {
		j := rnd.IntN(len(open))
		c := open[j]
		open[j] = open[len(open)-1]
		open = open[:len(open)-1]
		cands[c.backend].Load--
		if byKey[c.key][c.backend]--; byKey[c.key][c.backend] == 0 {
			delete(byKey[c.key], c.backend)
		}
		add()
		if step%10 != 0 {
			continue
		}
		samples++
		onMain, multi, together := 0, 0, 0
		for k, on := range byKey {
			n := 0
			for _, x := range on {
				n += x
			}
			onMain += on[owner[k]]
			if n >= 2 {
				multi++
				if len(on) == 1 {
					together++
				}
			}
		}
		top := int64(0)
		for i := range cands {
			top = max(top, cands[i].Load)
		}
		cell.main += float64(onMain) / float64(conns)
		if multi > 0 {
			cell.together += float64(together) / float64(multi)
		}
		cell.maxAvg = max(cell.maxAvg, float64(top)*float64(backends)/float64(conns))
	}
	cell.main /= float64(samples)
	cell.together /= float64(samples)
	return cell
}

func TestFloorOnTheBoundTradesBalanceForColocationAtLowLoad(t *testing.T) {
	const backends, keys = 10, 100
	connCounts := []int{30, 300}
	floors := []int64{0, 8, 16}
	steps := 3000
	if *long {
		connCounts = []int{30, 100, 300}
		floors = []int64{0, 2, 4, 8, 16}
		steps = 20000
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\nc = 1.25, %d backends, %d keys of uniform popularity, a steady number of connections with churn:\n\n| min bound |", backends, keys)
	for _, n := range connCounts {
		x := 1.25 * float64(n) / backends
		fmt.Fprintf(&table, " %d connections (avg %.0f, bound %.0f) |", n, float64(n)/backends, math.Ceil(x))
	}
	table.WriteString("\n|---|" + strings.Repeat("---|", len(connCounts)) + "\n")
	plain := make([]steadyCell, len(connCounts))
	for _, floor := range floors {
		fmt.Fprintf(&table, "| %d |", floor)
		for i, n := range connCounts {
			cell := steady(t, backends, keys, n, steps, Options{MinBound: floor})
			fmt.Fprintf(&table, " %.1f%% · %.0f%% · %.2f (max %d) |", 100*cell.main, 100*cell.together, cell.maxAvg, cell.maxLoad)
			if cell.maxLoad > max(floor, cell.bound) {
				t.Errorf("%d connections, floor %d: a backend reached %d, over both the floor and the bound %d", n, floor, cell.maxLoad, cell.bound)
			}
			switch {
			case floor == 0:
				plain[i] = cell
			case floor < plain[i].bound:
				// Under the bound a floor never engages: the same
				// choices, the same figures.
				if cell.main != plain[i].main || cell.together != plain[i].together {
					t.Errorf("%d connections: floor %d under the bound %d changed co-location from %.3f to %.3f", n, floor, plain[i].bound, plain[i].main, cell.main)
				}
			case floor >= 2*plain[i].bound:
				if cell.together < plain[i].together+0.1 {
					t.Errorf("%d connections: floor %d, twice the bound, keeps %.1f%% of keys together, %.1f%% without", n, floor, 100*cell.together, 100*plain[i].together)
				}
			}
		}
		table.WriteString("\n")
	}
	t.Log("cells: connections on their key's main backend · keys (with ≥ 2 connections) all on one backend · worst max load ÷ average (worst max load)\n", table.String())
}
