package balancer

import (
	"math/bits"
	"math/rand/v2"
	"time"
)

// LeastLoaded returns the available upstream with the lowest load per unit
// of weight, or nil if none is available. A backend's weight is its static
// weight, else the capacity it reports; a backend with neither counts as the
// mean of the known weights, so that a set where no weight is known is plain
// least connections over raw counts (as internal/affinity.LeastLoaded
// decides, in integers here). Ties are broken uniformly at random by
// reservoir sampling, never by list order, so that equal backends fill
// evenly. skip, if not nil, excludes upstreams (those already tried by a
// retry).
//
// One pass, no allocation: the best backend of known weight (by load ÷
// weight, compared by cross-multiplication) and the best of unknown weight
// (by load: they all weigh the mean) are kept apart, and compared at the end
// once the mean is known.
func LeastLoaded(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	var bestK, bestU *Upstream // best of known, of unknown weight
	var loadK, wK, loadU int64
	tiesK, tiesU := 0, 0
	var known, sumKnown int64
	for _, u := range ups {
		if skip != nil && skip(u) {
			continue
		}
		load, ok := u.availableLoad(now)
		if !ok {
			continue
		}
		load = max(load, 0)
		w := u.weight()
		if w <= 0 {
			switch {
			case bestU == nil || load < loadU:
				bestU, loadU, tiesU = u, load, 1
			case load == loadU:
				tiesU++
				if rand.IntN(tiesU) == 0 {
					bestU = u
				}
			}
			continue
		}
		known++
		sumKnown += w
		if bestK == nil {
			bestK, loadK, wK, tiesK = u, load, w, 1
			continue
		}
		switch cmpProducts(load, wK, loadK, w) { // load/w against loadK/wK
		case -1:
			bestK, loadK, wK, tiesK = u, load, w, 1
		case 0:
			tiesK++
			if rand.IntN(tiesK) == 0 {
				bestK = u
			}
		}
	}
	switch {
	case bestK == nil:
		return bestU
	case bestU == nil:
		return bestK
	}
	// loadK/wK against loadU/mean, mean = sumKnown/known.
	switch cmpProducts(loadK, sumKnown, loadU*known, wK) {
	case -1:
		return bestK
	case 1:
		return bestU
	}
	if rand.IntN(tiesK+tiesU) < tiesK {
		return bestK
	}
	return bestU
}

// cmpProducts compares a·b with c·d, all non-negative, without overflow.
func cmpProducts(a, b, c, d int64) int {
	hi1, lo1 := bits.Mul64(uint64(a), uint64(b))
	hi2, lo2 := bits.Mul64(uint64(c), uint64(d))
	switch {
	case hi1 < hi2 || (hi1 == hi2 && lo1 < lo2):
		return -1
	case hi1 == hi2 && lo1 == lo2:
		return 0
	}
	return 1
}

// TwoChoices picks two distinct available upstreams at random and returns
// the less loaded ("power of two choices"). Unlike LeastLoaded it does not
// send a burst to one backend while load reports lag behind: the least
// loaded one is only likely, not certain, to be chosen.
func TwoChoices(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	var a, b *Upstream
	seen := 0
	// Reservoir-sample two available upstreams in one pass.
	for _, u := range ups {
		if (skip != nil && skip(u)) || !u.Available(now) {
			continue
		}
		seen++
		switch {
		case seen == 1:
			a = u
		case seen == 2:
			b = u
		default:
			if i := rand.IntN(seen); i == 0 {
				a = u
			} else if i == 1 {
				b = u
			}
		}
	}
	if b == nil || a.Load() < b.Load() {
		return a
	}
	if b.Load() < a.Load() || rand.IntN(2) == 0 {
		return b
	}
	return a
}

// triedSet is the upstreams a retry loop has tried, to skip on the next
// attempt; a few at most, so a slice.
type triedSet struct{ list []*Upstream }

func (t *triedSet) add(u *Upstream) { t.list = append(t.list, u) }

func (t *triedSet) has(u *Upstream) bool {
	for _, x := range t.list {
		if x == u {
			return true
		}
	}
	return false
}
