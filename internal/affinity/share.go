package affinity

import "math"

// Bounds of TrafficShare, the same as those of the balancer's share estimate
// for assign mode (internal/balancer).
const (
	// MinOwnForShare is how many connections a balancer must hold before
	// TrafficShare trusts the ratio: one that just started holds a handful,
	// and its few changes must not be multiplied into phantom loads.
	MinOwnForShare = 20
	// MaxTrafficShare caps TrafficShare: one balancer's view of a fleet of
	// at most this many that split the traffic evenly.
	MaxTrafficShare = 16
)

// TrafficShare estimates how many connections all balancers together hold
// for each one this balancer holds: the total the backends last reported over
// this balancer's own total, between 1 and MaxTrafficShare, and 1 while it
// holds fewer than MinOwnForShare.
func TrafficShare(reportedTotal, ownTotal int64) float64 {
	if ownTotal < MinOwnForShare {
		return 1
	}
	return min(max(float64(reportedTotal)/float64(ownTotal), 1), MaxTrafficShare)
}

// ScaledLoad is a backend's global load estimated from a report that may be
// seconds old: the reported count, plus this balancer's own change since the
// backend took it (own now, less ownAtReport) times share, its TrafficShare.
//
// Why scale: the report shows nobody's changes since it was taken, and this
// balancer sees only its own. Counting them once, as least connections does,
// lets every balancer fill a backend up to the bound in its own view: with a
// hot key, whose connections arrive at every balancer and go to the same
// backend, together far past it (1.45× the bound in the simulation of
// docs/affinity.md, 10 balancers, reports 2 s apart). Its own change times
// its share stands for everyone's: the worst placement fell to 1.04× the
// bound, and co-location stayed within 3 points of that with exact loads,
// also when most of a key's connections come through one balancer.
func ScaledLoad(reported, own, ownAtReport int64, share float64) int64 {
	return max(0, reported+int64(math.Round(share*float64(own-ownAtReport))))
}
