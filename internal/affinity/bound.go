package affinity

import (
	"fmt"
	"math"
)

// DefaultBalanceFactor is the balance factor c when none is set: no backend
// takes a new connection once it holds 25% more than its share. It is the
// usual default of bounded-load hashing (brpc's, for one); docs/affinity.md
// measures what other values cost and buy.
const DefaultBalanceFactor = 1.25

// Options tune Pick and Bounds. The zero value is the paper's algorithm with
// the default balance factor.
type Options struct {
	// BalanceFactor is c: a backend takes a new connection only while its
	// load is below ⌈c · (total + 1) · w_i / Σw⌉, that is c times its share.
	// Must be > 1; 0 means DefaultBalanceFactor. Lower keeps loads tighter
	// and spills more keys; higher keeps more keys together.
	BalanceFactor float64
	// MinBound is a floor on every backend's bound; 0 means none. While the
	// fleet is nearly empty the bound is 1 or 2 and a key's second connection
	// spills for no reason but arithmetic; a floor of a few connections keeps
	// those together, at the price that a backend may hold up to MinBound
	// connections however empty the others are. Once the bound exceeds the
	// floor it changes nothing: it trades balance for co-location exactly
	// where it relaxes the bound, worth it where that is a handful of
	// connections (docs/affinity.md measures it).
	MinBound int64
	// OwnBound also keeps this balancer's own connections to a backend
	// (Candidate.Own) under the bound worked out from its own connections
	// alone, ⌈c · (own total + 1) · w_i / Σw⌉ or MinBound. Pick then takes
	// the first backend clockwise within both bounds, or, when none is,
	// the first within the global one.
	//
	// Why: between two reports every balancer adds its own connections to
	// the same stale count, and a hot key's connections, arriving at every
	// balancer, fill its backend up to the bound in each balancer's view:
	// together well past the true bound. The own bounds of all balancers
	// add up to the global bound plus about one connection per balancer,
	// whatever the reports say: in the simulation of docs/affinity.md the
	// worst placement fell from 1.45× to 1.03× the bound. The price: when
	// most of a key's connections come through one balancer, that
	// balancer's own bound spills the key long before the backend is full
	// (37% of connections on their key's main backend, 53% with
	// ScaledLoad). ScaledLoad tames the same herd without that price and is
	// the better default; OwnBound gives the tightest bound where every
	// key's connections spread evenly over the balancers. Meaningful where
	// a balancer holds its connections (proxy mode), not for assign mode.
	OwnBound bool
}

// Validate reports whether the options are usable.
func (o Options) Validate() error {
	if c := o.BalanceFactor; c != 0 && (!(c > 1) || math.IsInf(c, 1)) {
		return fmt.Errorf("balance factor %v: must be a number greater than 1", c)
	}
	if o.MinBound < 0 {
		return fmt.Errorf("minimum bound %d: must not be negative", o.MinBound)
	}
	return nil
}

// factor is the balance factor in effect. Pick is on the hot path and does
// not validate: anything Validate rejects counts as the default.
func (o Options) factor() float64 {
	if c := o.BalanceFactor; c > 1 && !math.IsInf(c, 1) {
		return c
	}
	return DefaultBalanceFactor
}

// bounder computes the bounds of one selection.
type bounder struct {
	scale    float64 // c · (total + 1) / Σw
	ownScale float64 // c · (own total + 1) / Σw
	floor    int64
}

func newBounder(v *loadView, o Options) bounder {
	c := o.factor()
	return bounder{
		scale:    c * float64(v.total+1) / v.sumW,
		ownScale: c * float64(v.ownTotal+1) / v.sumW,
		floor:    o.MinBound,
	}
}

// bound is the global bound of a backend of weight w.
func (b bounder) bound(w float64) int64 { return ceilFloor(b.scale*w, b.floor) }

// ownBound is the bound of this balancer's own connections to it.
func (b bounder) ownBound(w float64) int64 { return ceilFloor(b.ownScale*w, b.floor) }

// ceilFloor is ⌈x⌉, raised to floor.
//
// x is a float product, and 1.1 · 10 is 11.000000000000002 there: a plain
// Ceil would make that bound 12. Shaving a relative 1e-12 first keeps exact
// integers exact; a true fractional part is never that small, as it is at
// least 1/(Σw · the denominator of c) for any real configuration.
func ceilFloor(x float64, floor int64) int64 {
	x -= x * 1e-12
	if x >= math.MaxInt64 {
		return math.MaxInt64
	}
	return max(int64(math.Ceil(x)), floor)
}

// Bounds returns each candidate's bound under o, for the admin API and
// status page: the load at which Pick stops sending it new keys. Ineligible
// candidates get 0. The result is dst, grown as needed.
func Bounds(cands []Candidate, o Options, dst []int64) []int64 {
	dst = append(dst[:0], make([]int64, len(cands))...)
	v := viewOf(cands)
	if v.n == 0 {
		return dst
	}
	b := newBounder(&v, o)
	for i := range cands {
		if cands[i].Eligible {
			dst[i] = b.bound(v.weight(&cands[i]))
		}
	}
	return dst
}
