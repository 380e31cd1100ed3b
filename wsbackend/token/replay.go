package token

import (
	"container/heap"
	"sync"
	"time"
)

// DefaultReplayCacheSize is the capacity of the cache a Verifier makes when
// given none. At about 100 bytes an entry it costs some 6.5 MB when full, and
// it lasts for a sustained 1,800 accepted tokens a second with the default
// 30s lifetime and 5s leeway.
const DefaultReplayCacheSize = 65536

// ReplayCache remembers the IDs of accepted tokens until the tokens expire, so
// that each is accepted once. It is safe for concurrent use. One cache covers
// one process; backends that run several processes behind one ID need a
// shared store instead.
//
// Memory is bounded by the capacity. Size it for the peak rate of accepted
// tokens times their lifetime plus leeway.
//
// When the cache is full it first forgets every ID whose token has expired;
// if it is still full, Use fails closed with ErrReplayCacheFull rather than
// forgetting a live ID, which would let that token be replayed. The cost is
// availability: new connections are refused (Middleware answers 503) until
// entries expire, at most MaxLifetime plus leeway later. Only tokens with a
// valid signature reach the cache, so filling it takes a flood of genuinely
// issued tokens, not forged ones.
//
// Entries are grouped by the second at which they may be forgotten, and the
// distinct seconds are kept in a min-heap. Use is O(1) amortised: map
// operations, plus a heap push the first time a second is seen (O(log B) for
// B distinct live seconds, a few hundred at most), and each entry is removed
// exactly once.
type ReplayCache struct {
	mu      sync.Mutex
	max     int
	seen    map[string]struct{}
	buckets map[int64][]string // forget-at second -> IDs
	order   secondHeap         // the keys of buckets, earliest first
}

// NewReplayCache returns a cache holding at most max IDs. max <= 0 means
// DefaultReplayCacheSize.
func NewReplayCache(max int) *ReplayCache {
	if max <= 0 {
		max = DefaultReplayCacheSize
	}
	return &ReplayCache{
		max:     max,
		seen:    make(map[string]struct{}),
		buckets: make(map[int64][]string),
	}
}

// Use records that the token with ID jti was accepted at now and must not be
// accepted again before until. It returns ErrReplayed if jti is already
// recorded, and ErrReplayCacheFull if there is no room. If until is not after
// now there is nothing to remember and Use returns nil: the token's own expiry
// check rejects it from then on.
func (c *ReplayCache) Use(jti string, until, now time.Time) error {
	// Round up: keeping an ID up to a second longer is harmless, forgetting it
	// early is not.
	at := until.Unix()
	if until.Nanosecond() != 0 {
		at++
	}
	nowSec := now.Unix()

	c.mu.Lock()
	defer c.mu.Unlock()
	c.forget(nowSec)
	if _, ok := c.seen[jti]; ok {
		return ErrReplayed
	}
	if at <= nowSec {
		return nil
	}
	if len(c.seen) >= c.max {
		return ErrReplayCacheFull
	}
	c.seen[jti] = struct{}{}
	b, ok := c.buckets[at]
	if !ok {
		heap.Push(&c.order, at)
	}
	c.buckets[at] = append(b, jti)
	return nil
}

// Len returns the number of IDs held, including any expired ones not yet
// forgotten (they go on the next Use).
func (c *ReplayCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// forget drops every bucket due at or before now. Forgetting on every Use,
// rather than only when full, keeps the work per call small and steady.
func (c *ReplayCache) forget(now int64) {
	for len(c.order) > 0 && c.order[0] <= now {
		at := heap.Pop(&c.order).(int64)
		for _, id := range c.buckets[at] {
			delete(c.seen, id)
		}
		delete(c.buckets, at)
	}
}

// secondHeap is a min-heap of Unix seconds for container/heap.
type secondHeap []int64

func (h secondHeap) Len() int           { return len(h) }
func (h secondHeap) Less(i, j int) bool { return h[i] < h[j] }
func (h secondHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *secondHeap) Push(x any)        { *h = append(*h, x.(int64)) }
func (h *secondHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}
