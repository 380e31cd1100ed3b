package wsbackend

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/retry"
)

// Publishing defaults; see ReporterOptions.
const (
	DefaultThreshold          = 0.10
	DefaultMinStep            = 5
	DefaultMinPublishInterval = 2 * time.Second
	DefaultRefreshAfter       = 30 * time.Second
)

// publishJitter spreads publishes: the gap after each publish is
// MinPublishInterval times a random factor in [1, 1+publishJitter), that is
// 1.2 times the interval plus or minus 20%, never less than the interval.
const publishJitter = 0.4

// ReporterOptions configure a Reporter. Zero values mean the defaults.
type ReporterOptions struct {
	// Publish makes connections visible to balancers (for Consul:
	// re-registering the service with meta ws_connections). Required. It is
	// called by one goroutine at a time; an error makes the Reporter retry
	// with backoff.
	Publish func(ctx context.Context, connections int64) error

	// Capacity is the backend's connection limit, 0 for none. Crossing it,
	// either way, is always worth publishing.
	Capacity int64

	// Threshold is the relative change since the last publish that is worth
	// publishing at once: a count that moved by more than Threshold times the
	// published count (and by at least MinStep) is published as soon as
	// MinPublishInterval allows. Default 0.10 (10%).
	Threshold float64
	// MinStep is the smallest absolute change published at once, so that a
	// nearly idle backend going from 3 to 4 connections causes no write.
	// Default 5. Leaving or reaching 0 is always published at once.
	MinStep int64
	// MinPublishInterval is the least time between two publishes. Each gap
	// is this interval times a random factor in [1, 1.4), so a fleet
	// started together spreads out; the bound "at most one publish per
	// MinPublishInterval" holds exactly. Default 2s.
	MinPublishInterval time.Duration
	// RefreshAfter bounds how stale a small change may get: a count that
	// differs at all from the published one is published at most this long
	// after the last publish. Default 30s.
	RefreshAfter time.Duration

	// Logger receives failures (once per failure episode) and recoveries;
	// nil discards them.
	Logger *zap.Logger
}

// Reporter publishes a Counter's count in coarse steps, so that balancers
// see every significant change within about MinPublishInterval while the
// writes a fleet of backends causes stay bounded: at most one publish per
// backend per MinPublishInterval, and with a steady count none at all.
//
// A count is published as soon as the rate limit allows when it moved by
// more than Threshold (and MinStep) since the last publish, reached or left
// 0, or crossed Capacity; any other difference is published RefreshAfter
// after the last publish. The Counter wakes the Reporter through an OnChange
// hook that costs an atomic load or two per connection.
type Reporter struct {
	counter *Counter
	opts    ReporterOptions
	logger  *zap.Logger

	wake chan struct{} // capacity 1: a token means "evaluate again"
	// urgent and pending tell the OnChange hook that the loop already has a
	// timer covering a significant (urgent) or any (pending) difference, so
	// the hook need not wake it; they only ever save wakeups.
	urgent, pending atomic.Bool
	// force asks for a publish regardless of the count, after a publish
	// through PublishNow failed.
	force atomic.Bool

	// pubMu serializes publishes and the updates of the fields below.
	pubMu sync.Mutex
	// published is the last published count, -1 before the first publish;
	// the hook reads it on every change.
	published atomic.Int64
	last      atomic.Pointer[publishRecord] // nil before the first publish
	// nextAllowed is when the loop may publish again (unix nanoseconds).
	nextAllowed atomic.Int64
	// onPublished, if set, is called after each successful publish, under
	// pubMu.
	onPublished func(connections int64)
}

type publishRecord struct {
	connections int64
	at          time.Time
}

// NewReporter returns a Reporter of c's count. Start it with Run.
func NewReporter(c *Counter, opts ReporterOptions) (*Reporter, error) {
	if c == nil {
		return nil, errors.New("reporter: nil Counter")
	}
	return newReporter(c, opts)
}

// newReporter also accepts a nil Counter, for a Registration that reports
// no count: it then publishes -1 when asked to and never on its own.
func newReporter(c *Counter, opts ReporterOptions) (*Reporter, error) {
	if opts.Publish == nil {
		return nil, errors.New("reporter: Publish is required")
	}
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	r := &Reporter{counter: c, opts: opts, logger: opts.Logger, wake: make(chan struct{}, 1)}
	if r.logger == nil {
		r.logger = zap.NewNop()
	}
	r.published.Store(-1)
	return r, nil
}

func (o *ReporterOptions) setDefaults() error {
	switch {
	case o.Threshold < 0 || o.MinStep < 0 || o.MinPublishInterval < 0 || o.RefreshAfter < 0 || o.Capacity < 0:
		return errors.New("reporter: negative option")
	case o.RefreshAfter > 0 && o.MinPublishInterval > 0 && o.RefreshAfter < o.MinPublishInterval:
		return errors.New("reporter: RefreshAfter is shorter than MinPublishInterval")
	}
	if o.Threshold == 0 {
		o.Threshold = DefaultThreshold
	}
	if o.MinStep == 0 {
		o.MinStep = DefaultMinStep
	}
	if o.MinPublishInterval == 0 {
		o.MinPublishInterval = DefaultMinPublishInterval
	}
	if o.RefreshAfter == 0 {
		o.RefreshAfter = max(DefaultRefreshAfter, o.MinPublishInterval)
	}
	return nil
}

// Published returns the last published count and when it was published; ok
// is false before the first publish.
func (r *Reporter) Published() (connections int64, at time.Time, ok bool) {
	last := r.last.Load()
	if last == nil {
		return 0, time.Time{}, false
	}
	return last.connections, last.at, true
}

// Significant reports whether a count of live, against a published count of
// published, is worth publishing at once under opts (defaults applied): it
// moved by more than Threshold of published and at least MinStep, reached
// or left 0, or crossed Capacity.
func (o ReporterOptions) Significant(published, live int64) bool {
	if o.setDefaults() != nil {
		return published != live
	}
	return o.significant(published, live)
}

func (o *ReporterOptions) significant(published, live int64) bool {
	switch {
	case live == published:
		return false
	case published < 0: // never published
		return true
	case (published == 0) != (live == 0):
		return true
	case o.Capacity > 0 && (published >= o.Capacity) != (live >= o.Capacity):
		return true
	}
	d := live - published
	if d < 0 {
		d = -d
	}
	return d >= o.MinStep && float64(d) > o.Threshold*float64(published)
}

// live reads the count, -1 when there is no Counter. A count driven below
// zero by unmatched Adds is published as 0.
func (r *Reporter) live() int64 {
	if r.counter == nil {
		return -1
	}
	return max(0, r.counter.Live())
}

// onChange is the Counter hook: it wakes the loop when the new count is
// worth a look the loop has not scheduled yet.
func (r *Reporter) onChange(live int64) {
	p := r.published.Load()
	if live == p {
		return
	}
	if r.opts.significant(p, live) {
		if !r.urgent.Load() && r.urgent.CompareAndSwap(false, true) {
			r.signal()
		}
		return
	}
	if !r.pending.Load() && r.pending.CompareAndSwap(false, true) {
		r.signal()
	}
}

func (r *Reporter) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// PublishNow publishes the current count at once, ignoring the rate limit,
// for changes that must not wait (a Registration uses it to register and to
// drain). If it fails, the Reporter's loop retries with backoff.
func (r *Reporter) PublishNow(ctx context.Context) error {
	err := r.publish(ctx)
	if err != nil {
		r.force.Store(true)
		r.signal()
	}
	return err
}

// publish publishes the current count and records it.
func (r *Reporter) publish(ctx context.Context) error {
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	start := time.Now()
	n := r.live()
	if err := r.opts.Publish(ctx, n); err != nil {
		return err
	}
	r.force.Store(false)
	r.published.Store(n)
	r.last.Store(&publishRecord{connections: n, at: start})
	gap := time.Duration(float64(r.opts.MinPublishInterval) * (1 + publishJitter*rand.Float64()))
	r.nextAllowed.Store(start.Add(gap).UnixNano())
	if r.onPublished != nil {
		r.onPublished(n)
	}
	r.signal() // the count may have moved meanwhile: evaluate again
	return nil
}

// due returns when the loop should publish next, and false when the
// published count is current. It marks what it scheduled in urgent and
// pending.
func (r *Reporter) due(now time.Time) (time.Time, bool) {
	// Clear the marks before reading the count: a change after the read
	// then finds them clear and wakes the loop again.
	r.urgent.Store(false)
	r.pending.Store(false)
	n := r.live()
	p := r.published.Load()
	next := time.Unix(0, r.nextAllowed.Load())
	switch {
	case r.force.Load() || r.opts.significant(p, n):
		r.urgent.Store(true)
		r.pending.Store(true)
		return laterOf(now, next), true
	case n != p:
		r.pending.Store(true)
		var refresh time.Time
		if last := r.last.Load(); last != nil {
			refresh = last.at.Add(r.opts.RefreshAfter)
		}
		return laterOf(now, laterOf(next, refresh)), true
	}
	return time.Time{}, false
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// Run publishes until ctx ends, then returns ctx's error. A Reporter that
// never published publishes at once. Run must not be called concurrently
// with itself.
func (r *Reporter) Run(ctx context.Context) error {
	if r.counter != nil {
		remove := r.counter.OnChange(r.onChange)
		defer remove()
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	fails := newOutage(r.logger, "publishing the connection count")
	bo := retry.Backoff{Base: r.opts.MinPublishInterval, Max: max(30*time.Second, r.opts.MinPublishInterval)}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-r.wake:
		case <-timer.C:
		}
		now := time.Now()
		at, ok := r.due(now)
		if ok && !at.After(now) {
			if err := r.publish(ctx); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				fails.Fail(err)
				// A failed publish may still have reached Consul (a timeout
				// after the agent applied it): keep the rate limit.
				wait := max(bo.Next(), r.opts.MinPublishInterval)
				r.nextAllowed.Store(now.Add(wait).UnixNano())
				at, ok = r.due(time.Now())
			} else {
				fails.OK()
				bo.Reset()
				continue // publish signalled: evaluate again at once
			}
		}
		if ok {
			timer.Reset(time.Until(at))
		} else {
			timer.Stop()
		}
	}
}

// newOutage returns the outage log of one of the library's loops.
func newOutage(logger *zap.Logger, what string) *retry.Outage {
	return &retry.Outage{Logger: logger, Failed: what + " failed; retrying with backoff", Recovered: what + " recovered"}
}
