package balancer

import (
	"sync"
)

// Bounds of the share estimate; see shareEstimator.
const (
	// shareMinOwn is how many of its own assignments (decayed) a balancer
	// must have seen reported before it trusts the ratio.
	shareMinOwn = 20
	// shareMinOwnLive is the same for live connections, which the
	// baselines count exactly. It is low because the first report that
	// lands inside a burst must already be believed: until the scale is
	// known, that backend carries the other balancers' connections and the
	// rest do not, so every balancer turns away from it. A report of 12
	// holding 6 of ours, ignored under a bound of 8, left a burst of 120
	// through two balancers at 55/65 instead of 60/60.
	shareMinOwnLive = 2
	// shareMaxScale caps the scale: one balancer's view of a fleet of at
	// most this many that split the load evenly.
	shareMaxScale = 16
	// shareDecay weighs older report intervals down, so that the estimate
	// follows a fleet that grows or shrinks.
	shareDecay = 0.75
)

// shareEstimator estimates how many connections (or assignments) all
// balancers together make for each one this process makes, from the
// backends' reports: a report's growth since the previous one counts
// everyone's clients, while this process knows its own over the same
// interval.
//
// Why: each balancer counts only its own connections (or recent
// assignments) on top of the last reports, and the reports come seconds
// apart and not all at once. A backend that reported lately then carries
// everyone's, while one that has not yet reported carries only this
// balancer's, and looks lighter than it is: in a burst spanning a report
// interval, every balancer would pile onto whichever backend reports last.
// Scaling this balancer's own part by the estimate (about the number of
// balancers sharing the burst) puts the backends on an equal footing.
//
// Closed connections shrink the growth, so under churn the estimate falls
// toward 1 (count only one's own), which is what the balancer did without
// it. Intervals in which this process opened nothing to the backend say
// nothing about its share (the growth came from elsewhere, such as clients
// connecting to the backend directly) and are skipped.
type shareEstimator struct {
	// own returns this process's part of the growth between two reports
	// of b, and apply sets the scale on b; they differ between proxy mode
	// (live connections) and assign mode (recent assignments).
	own   func(b *Backend, prev, cur *loadReport) float64
	apply func(b *Backend, scale float64)
	// minOwn is how much of its own traffic (decayed) a balancer must have
	// seen reported before it trusts the ratio.
	minOwn float64

	mu sync.Mutex
	// last is the report each backend's interval is measured from.
	last map[*Backend]*loadReport
	// growth and own are the decayed sums of the reported growth and this
	// process's part over the same intervals.
	growth, ownSum float64
	scale          float64
}

// newAssignShare estimates the share of assignments (assign mode): an
// assignment's client connects after it is made, so the report interval's
// own part is the assignments made within it.
func newAssignShare() *shareEstimator {
	return &shareEstimator{
		own: func(b *Backend, prev, cur *loadReport) float64 {
			return float64(b.assigned.madeBetween(prev.at, cur.at))
		},
		apply:  func(b *Backend, scale float64) { b.assigned.setScale(scale) },
		minOwn: shareMinOwn,
	}
}

// newLiveShare estimates the share of live connections (proxy mode): the
// baselines are this process's live count at each report's snapshot, so
// their difference is exactly its part of the growth. Being exact, fewer
// samples suffice than for assignments.
func newLiveShare() *shareEstimator {
	return &shareEstimator{
		own:    func(b *Backend, prev, cur *loadReport) float64 { return float64(cur.baseline - prev.baseline) },
		apply:  (*Backend).setLiveScale,
		minOwn: shareMinOwnLive,
	}
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
			e.apply(b, max(e.scale, 1))
		}
		if !seen || r == nil || prev == nil || !r.at.After(prev.at) {
			continue
		}
		own := e.own(b, prev, r)
		if own <= 0 {
			continue
		}
		e.growth = e.growth*shareDecay + float64(r.connections-prev.connections)
		e.ownSum = e.ownSum*shareDecay + own
		changed = true
	}
	if !changed {
		return
	}
	e.scale = 1
	if e.ownSum >= e.minOwn {
		e.scale = min(max(e.growth/e.ownSum, 1), shareMaxScale)
	}
	for _, u := range ups {
		e.apply(u.Backend, e.scale)
	}
}
