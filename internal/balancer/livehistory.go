package balancer

import (
	"sync"
	"time"
)

// liveHistorySize is how many changes of the live count a liveHistory keeps.
// A report's snapshot is usually less than a report interval (a few
// seconds) old when it arrives; within that, a balancer rarely opens or
// closes more than this many connections to one backend. When it does, the
// oldest known value stands in for older ones: the error is bounded by the
// changes the ring lost. 128 changes cost 2 KiB per reporting backend.
const liveHistorySize = 128

// liveHistory remembers this process's live count to one backend over the
// last changes, so that a load report can be matched with the count at the
// moment the backend took its snapshot rather than when the report arrived:
// the connections opened in between are in the report's count, and must not
// be added again, while those opened after the snapshot must be.
//
// Times are monotonic readings (time since recentEpoch), so a step of the
// wall clock does not reorder them.
type liveHistory struct {
	mu      sync.Mutex
	start   int64 // the live count before the first recorded change
	changes [liveHistorySize]liveChange
	n       int // changes recorded so far; the newest is at (n-1) % size
}

// liveChange is the live count from a moment on.
type liveChange struct {
	at   time.Duration
	live int64
}

// record notes that the live count became live at at. Callers hold mu, and
// change the count under it, so that records are in order.
func (h *liveHistory) record(at time.Duration, live int64) {
	h.changes[h.n%liveHistorySize] = liveChange{at: at, live: live}
	h.n++
}

// at returns the live count at moment t, given the count before any
// recorded change (start) and now (current). Callers hold mu.
func (h *liveHistory) at(t time.Duration, start int64) int64 {
	if h.n == 0 {
		return start
	}
	oldest := max(0, h.n-liveHistorySize)
	// Walk back from the newest change to the last one at or before t.
	for i := h.n - 1; i >= oldest; i-- {
		if c := h.changes[i%liveHistorySize]; c.at <= t {
			return c.live
		}
	}
	if oldest == 0 {
		return start
	}
	// t is older than every change kept: the oldest kept value is the best
	// estimate left.
	return h.changes[oldest%liveHistorySize].live
}

// monotonic is the monotonic time of t, for liveHistory.
func monotonic(t time.Time) time.Duration { return t.Sub(recentEpoch) }
