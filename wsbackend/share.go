package wsbackend

import (
	"sync"
)

// Bounds of the share estimate; see shareEstimator.
const (
	// shareMinOwn is how many of its own assignments (decayed) a balancer
	// must have seen reported before it trusts the ratio.
	shareMinOwn = 20
	// shareMaxScale caps the scale: one balancer's view of a fleet of at
	// most this many that split the load evenly.
	shareMaxScale = 16
	// shareDecay weighs older report intervals down, so that the estimate
	// follows a fleet that grows or shrinks.
	shareDecay = 0.75
)

// shareEstimator estimates how many assignments all balancers together make
// for each one this process makes, from the backends' reports: a report's
// growth since the previous one counts everyone's clients, while this
// process knows its own assignments over the same interval.
//
// Why: each balancer counts only its own recent assignments on top of the
// last reports, and the reports come seconds apart and not all at once. A
// backend that reported lately then carries everyone's assignments, while
// one that has not yet reported carries only this balancer's, and looks
// lighter than it is: in a burst spanning a report interval, every balancer
// would pile onto whichever backend reports last. Scaling the held
// assignments by the estimate (about the number of balancers sharing the
// burst) puts the backends on an equal footing.
//
// Closed connections shrink the growth, so under churn the estimate falls
// toward 1 (count only one's own), which is what the balancer did without
// it.
type shareEstimator struct {
	mu sync.Mutex
	// last is the report each backend's interval is measured from.
	last map[*Backend]*loadReport
	// growth and own are the decayed sums of the reported growth and this
	// process's assignments over the same intervals.
	growth, own float64
	scale       float64
}

// observe takes in the reports of ups that are new since the last call and
// sets the backends' scale.
func (e *shareEstimator) observe(ups []*Upstream) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.last == nil {
		e.last = make(map[*Backend]*loadReport, len(ups))
	}
	if len(e.last) > 2*len(ups)+8 {
		clear(e.last) // drop backends that left; the rest start over
	}
	changed := false
	for _, u := range ups {
		b := u.Backend
		r := b.report.Load()
		prev, seen := e.last[b]
		if seen && r == prev {
			continue
		}
		e.last[b] = r
		if !seen {
			b.assigned.setScale(max(e.scale, 1))
		}
		if !seen || r == nil || prev == nil || !r.at.After(prev.at) {
			continue
		}
		e.growth = e.growth*shareDecay + float64(r.connections-prev.connections)
		e.own = e.own*shareDecay + float64(b.assigned.madeBetween(prev.at, r.at))
		changed = true
	}
	if !changed {
		return
	}
	e.scale = 1
	if e.own >= shareMinOwn {
		e.scale = min(max(e.growth/e.own, 1), shareMaxScale)
	}
	for _, u := range ups {
		u.assigned.setScale(e.scale)
	}
}
