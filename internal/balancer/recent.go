package balancer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Resolution and reach of the recent-assignment window; see recentCount.
const (
	recentResolution = 100 * time.Millisecond
	recentBuckets    = 512

	// MaxAssignHold is the longest an assignment can be held against its
	// backend's load (AssignOptions.Hold).
	MaxAssignHold = (recentBuckets - 2) * recentResolution
)

// recentCount counts the assignments this process handed out lately for one
// backend, which the backend's load reports may not reflect yet. An
// assignment counts from when it is made until either its hold has passed
// or a report has come in that was taken in at least the report lag after
// the assignment: by then its client has connected (or never will) and the
// backend has counted it. Assignments made within the lag before a report
// came in keep counting, since the report may predate their connections,
// unless the report's growth accounts for them: a report that grew by g
// since the previous one holds about g/scale of this process's clients
// (scale: see shareEstimator), those of its oldest assignments, which then
// stop counting too. The lag is an upper bound on a client's way to the
// report; the growth says how far the report actually got, without
// counting twice what a generous lag would.
//
// Assignments sit in a ring of buckets by the 100 ms slot in which they were
// made. held is the sum of the buckets from the first one still counted,
// kept up to date as that boundary moves, so reading costs two atomic loads
// except once per slot, when the reader that notices time has moved drops
// the lapsed buckets under the mutex.
//
// The zero value is ready to use. It must not be copied.
type recentCount struct {
	// held is the number of assignments still counted.
	held atomic.Int64

	// next is the slot from which from must move on for time alone:
	// from + the hold in slots.
	next atomic.Int64

	mu      sync.Mutex
	buckets [recentBuckets]recentBucket
	// from is the first slot counted in held: earlier assignments lapsed or
	// are covered by a report.
	from int64
	// covered is the first slot not covered by the last report.
	covered int64
	// hold and lag, in slots; see add.
	hold, lag int64

	// scale is the float64 bits of the factor estimate applies to held, to
	// stand for the other balancers' assignments; 0 means 1. See
	// shareEstimator.
	scale atomic.Uint64

	// now is the clock; nil means time.Now. Tests set it before first use.
	now func() time.Time
}

// recentBucket holds the assignments made in one slot.
type recentBucket struct {
	slot int64 // slot number: time since recentEpoch / recentResolution
	n    int64
}

// recentTicket identifies an added assignment, so that it can be taken
// back.
type recentTicket struct{ slot int64 }

// recentEpoch anchors slot numbers. Measuring from it uses the monotonic
// clock, so a step of the wall clock neither lapses nor prolongs holds.
var recentEpoch = time.Now()

func slotOf(t time.Time) int64 { return int64(t.Sub(recentEpoch) / recentResolution) }

// slots converts a duration to whole slots, rounding up.
func slots(d time.Duration) int64 { return int64((d + recentResolution - 1) / recentResolution) }

func (c *recentCount) clock() time.Time {
	if c.now != nil {
		return c.now()
	}
	return time.Now()
}

// bucket returns the bucket for slot s, which may be negative under a test
// clock set before recentEpoch.
func (c *recentCount) bucket(s int64) *recentBucket {
	return &c.buckets[(s%recentBuckets+recentBuckets)%recentBuckets]
}

// count returns the number of assignments still counted now.
func (c *recentCount) count() int64 {
	if c.held.Load() == 0 {
		return 0 // nothing to drop: no clock read (proxy mode's path)
	}
	now := slotOf(c.clock())
	if now >= c.next.Load() {
		c.mu.Lock()
		c.advance(now)
		c.mu.Unlock()
	}
	return c.held.Load()
}

// estimate is count scaled up for the assignments other balancers made
// meanwhile, which this one cannot see until the backend reports them:
// every assignment still counted here stands for itself and for the
// scale-1 others made alongside it.
func (c *recentCount) estimate() int64 {
	n := c.count()
	if n == 0 {
		return 0
	}
	if f := c.scaleFactor(); f > 1 {
		return int64(math.Ceil(float64(n) * f))
	}
	return n
}

// setScale sets the factor of estimate.
func (c *recentCount) setScale(f float64) { c.scale.Store(math.Float64bits(f)) }

// scaleFactor is the factor of estimate, at least 1.
func (c *recentCount) scaleFactor() float64 { return max(math.Float64frombits(c.scale.Load()), 1) }

// madeBetween returns the number of assignments made in [from, to), as far
// back as the ring reaches, whether or not they still count.
func (c *recentCount) madeBetween(from, to time.Time) int64 {
	lo, hi := slotOf(from), slotOf(to)
	lo = max(lo, hi-recentBuckets+1)
	var n int64
	c.mu.Lock()
	for s := lo; s < hi; s++ {
		if b := c.bucket(s); b.slot == s {
			n += b.n
		}
	}
	c.mu.Unlock()
	return n
}

// add counts one assignment made now, for at most hold, and until a report
// taken in lag after it; see recentCount. The Assigners of a backend
// normally agree on hold and lag; the last one to add wins. add returns the
// ticket that takes the assignment back.
func (c *recentCount) add(hold, lag time.Duration) recentTicket {
	now := slotOf(c.clock())
	c.mu.Lock()
	c.hold, c.lag = slots(min(max(hold, 0), MaxAssignHold)), slots(max(lag, 0))
	c.advance(now)
	slot := max(now, c.from) // a clock that stepped back lands in a counted slot
	b := c.bucket(slot)
	if b.slot != slot {
		// The ring spans more than the hold, so the slot that used this
		// bucket before is no longer counted.
		*b = recentBucket{slot: slot}
	}
	b.n++
	c.held.Add(1)
	c.mu.Unlock()
	return recentTicket{slot: slot}
}

// remove takes back an assignment added with t, if it still counts.
func (c *recentCount) remove(t recentTicket) {
	c.mu.Lock()
	if b := c.bucket(t.slot); b.slot == t.slot && b.n > 0 {
		b.n--
		if t.slot >= c.from {
			c.held.Add(-1)
		}
	}
	c.mu.Unlock()
}

// reported notes that a report was taken in at t: assignments made more
// than the lag before it are in it and stop counting.
func (c *recentCount) reported(t time.Time, growth int64) {
	c.mu.Lock()
	end := slotOf(t)
	cut := end - c.lag
	if growth > 0 {
		// The report grew by growth since the previous one; of that,
		// about growth/scale are this process's clients, the oldest of
		// its assignments. Those whole slots are covered even when they
		// are younger than the lag.
		covers := int64(float64(growth) / c.scaleFactor())
		s, sum := c.from, int64(0)
		for ; s < end && s < c.from+recentBuckets; s++ {
			var n int64
			if b := c.bucket(s); b.slot == s {
				n = b.n
			}
			if sum+n > covers {
				break
			}
			sum += n
		}
		cut = max(cut, s)
	}
	c.covered = max(c.covered, cut)
	c.advance(slotOf(c.clock()))
	c.mu.Unlock()
}

// advance moves from to the first slot still counted at slot now, dropping
// the buckets it passes. c.mu must be held.
func (c *recentCount) advance(now int64) {
	lower := max(now-c.hold+1, c.covered)
	if lower > c.from {
		// Every counted slot is below from + recentBuckets: adding at a slot
		// first moves from past anything a hold's length older.
		for s := c.from; s < min(lower, c.from+recentBuckets); s++ {
			if b := c.bucket(s); b.slot == s {
				c.held.Add(-b.n)
			}
		}
		c.from = lower
	}
	c.next.Store(c.from + c.hold)
}
