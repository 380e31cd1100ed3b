package affinity

import "math/rand/v2"

// Rand is a source of random tie-breaks. A *rand.Rand from math/rand/v2
// satisfies it; nil means math/rand/v2's global source, which, unlike a
// *rand.Rand, is safe for concurrent use.
type Rand interface {
	IntN(n int) int
}

// LeastLoaded returns the index of the eligible candidate with the lowest
// load per unit of weight, or -1 when none is eligible. It is least
// connections for connections without a key, and for balancers without
// affinity.
//
// Weights are capacities or static weights (see Candidate). When none is
// known every weight is 1 and this is plain least connections over raw
// counts; an unknown weight among known ones counts as their mean. Ties are
// broken uniformly at random by reservoir sampling, never by list order, so
// that equal backends fill evenly.
func LeastLoaded(cands []Candidate, rnd Rand) int {
	v := viewOf(cands)
	if v.n == 0 {
		return -1
	}
	return leastLoaded(cands, &v, rnd)
}

func leastLoaded(cands []Candidate, v *loadView, rnd Rand) int {
	intN := rand.IntN
	if rnd != nil {
		intN = rnd.IntN
	}
	best, ties := -1, 0
	var bestRatio float64
	for i := range cands {
		c := &cands[i]
		if !c.Eligible {
			continue
		}
		// Division is exact to the last bit, so loads in the same
		// proportion as their weights compare equal and tie.
		ratio := float64(max(0, c.Load)) / v.weight(c)
		switch {
		case best < 0 || ratio < bestRatio:
			best, bestRatio, ties = i, ratio, 1
		case ratio == bestRatio:
			ties++
			if intN(ties) == 0 {
				best = i
			}
		}
	}
	return best
}
