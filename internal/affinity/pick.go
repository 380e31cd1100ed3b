package affinity

import "fmt"

// Choice is the outcome of Pick.
type Choice struct {
	// Index is the chosen backend's index in the ring's members (and in the
	// candidates given to Pick).
	Index int
	// Main is true when the chosen backend is the key's main backend: the
	// first eligible one clockwise from the key. False is a spill: the main
	// backend was at its bound. Metrics count hits and spills from it.
	Main bool
	// Bound is the chosen backend's bound at the time of choosing.
	Bound int64
}

// Pick chooses the backend for a new connection of key: the first eligible
// backend clockwise from the key's hash whose load is below its bound
// ⌈c · (total + 1) · w_i / Σw⌉ (see Options and Candidate), and, with
// Options.OwnBound, whose Own is below its own bound. ok is false when no
// candidate is eligible.
//
// cands must hold one entry per member, in the ring's order (cands[i].ID ==
// r.ID(i)). Pick panics, as on an index out of range, when their number is
// not the ring's, or when the candidate it chose is not the member of that
// index: one string comparison that catches candidates in another order.
// Ineligible backends are skipped, never counted in total or Σw: the bound is
// a promise about the backends that can take the connection.
//
// A hot key fills its main backend to the bound, then the next backend on
// the ring, and so on: every balancer walks the same ring, so the key's
// spill goes to the same few backends everywhere. Some backend is always
// below its bound (the least loaded one, relative to its weight, is below
// the average), so an eligible backend is always found.
//
// The empty key is an ordinary key here: every keyless connection would go to
// the one backend owning its hash, until the bound. Callers send keyless
// connections to LeastLoaded instead.
//
// Pick allocates nothing and reads cands only; it is safe for concurrent use.
func (r *Ring) Pick(key string, cands []Candidate, o Options) (choice Choice, ok bool) {
	if len(cands) != len(r.ids) {
		panic(fmt.Sprintf("affinity: Pick with %d candidates on a ring of %d backends", len(cands), len(r.ids)))
	}
	v := viewOf(cands)
	if v.n == 0 {
		return Choice{Index: -1}, false
	}
	b := newBounder(&v, o)
	main, spare := -1, Choice{Index: -1}
	k := r.search(hashKey(key))
	for range len(r.points) {
		i := int(r.owners[k])
		if k++; k == len(r.points) {
			k = 0
		}
		cand := &cands[i]
		if !cand.Eligible {
			continue
		}
		if main < 0 {
			main = i
		}
		// A backend owns many points: met again after it was found full,
		// it is full again. Checking costs less than remembering.
		w := v.weight(cand)
		bound := b.bound(w)
		if cand.Load >= bound {
			continue
		}
		got := Choice{Index: i, Main: i == main, Bound: bound}
		if !o.OwnBound || cand.Own < b.ownBound(w) {
			r.checkAligned(cands, i)
			return got, true
		}
		if spare.Index < 0 {
			spare = got
		}
	}
	if spare.Index >= 0 {
		// Every backend within the global bound is at this balancer's own
		// bound: the global bound is the one promised.
		r.checkAligned(cands, spare.Index)
		return spare, true
	}
	// Unreachable unless rounding defeats the argument above: fall back to
	// the backend with the most room rather than fail a connection.
	i := leastLoaded(cands, &v, nil)
	r.checkAligned(cands, i)
	return Choice{Index: i, Main: i == main, Bound: b.bound(v.weight(&cands[i]))}, true
}

// checkAligned panics when the chosen candidate is not the ring's member i.
func (r *Ring) checkAligned(cands []Candidate, i int) {
	if cands[i].ID != r.ids[i] {
		panic(fmt.Sprintf("affinity: candidate %d is %q, ring member %d is %q: candidates must follow the ring's order", i, cands[i].ID, i, r.ids[i]))
	}
}
