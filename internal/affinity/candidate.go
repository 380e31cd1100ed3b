package affinity

import "math"

// Candidate is one backend as a selection sees it at the moment of choosing.
type Candidate struct {
	// ID is the backend's ID, as given to NewRing.
	ID string
	// Load is the backend's global load: its last reported connection count
	// plus what this balancer opened to it since (pending assignments
	// included), or this balancer's own count when it has no report. With
	// several balancers, scale the part since the report by ScaledLoad, or
	// a hot key's backend overshoots its bound until the next report.
	// Negative values count as 0.
	Load int64
	// Weight is the backend's reported capacity or its static weight, in
	// any unit shared by the set; only ratios matter. 0 means unknown.
	Weight float64
	// Eligible is false for backends that must not take a new connection:
	// down, draining, or at their capacity or max_conns.
	Eligible bool
	// Own is this balancer's own part of Load: the connections it holds to
	// the backend now. Only Options.OwnBound reads it.
	Own int64
}

// loadView is what a selection needs to know about the eligible candidates
// as a whole, computed in one pass.
type loadView struct {
	n        int     // eligible candidates
	total    int64   // sum of their loads
	ownTotal int64   // sum of their Own
	mean     float64 // weight standing in for an unknown one
	sumW     float64 // sum of their effective weights
}

// viewOf summarises the eligible candidates.
//
// A backend with no known weight counts as the mean of the known weights of
// the eligible ones: with nothing known about it, the typical backend of the
// set is the best guess, a set where no weight is known reduces exactly to
// the unweighted algorithm (every weight 1), and a set where all are known is
// exact. Taking 0 would starve a backend that only failed to report, taking
// the smallest or largest would let one outlier decide for the unknown ones.
func viewOf(cands []Candidate) loadView {
	var v loadView
	known, sumKnown := 0, 0.0
	for i := range cands {
		c := &cands[i]
		if !c.Eligible {
			continue
		}
		v.n++
		v.total += max(0, c.Load)
		v.ownTotal += max(0, c.Own)
		if knownWeight(c.Weight) {
			known++
			sumKnown += c.Weight
		}
	}
	v.mean = 1
	if known > 0 {
		v.mean = sumKnown / float64(known)
	}
	v.sumW = sumKnown + float64(v.n-known)*v.mean
	return v
}

// weight is c's effective weight under v.
func (v *loadView) weight(c *Candidate) float64 {
	if knownWeight(c.Weight) {
		return c.Weight
	}
	return v.mean
}

// knownWeight reports whether w is a usable weight: positive and finite.
// Anything else (0, negative, NaN, +Inf) is treated as unknown rather than
// allowed to poison every bound with NaN.
func knownWeight(w float64) bool { return w > 0 && !math.IsInf(w, 1) }
