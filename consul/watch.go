package consul

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/internal/retry"
)

// ErrPermissionDenied is returned (wrapped) when Consul refuses the query:
// a 401 or 403 answer, or an answer emptied by ACL filtering. Test with
// errors.Is.
var ErrPermissionDenied = errors.New("consul: permission denied: check the token")

// Defaults of WatchOptions.
const (
	DefaultStartTimeout = 10 * time.Second
	DefaultRate         = rate.Limit(2) // queries per second
	DefaultBurst        = 2
	DefaultBackoffBase  = 500 * time.Millisecond
	DefaultBackoffMax   = 10 * time.Second
)

// requestSlack is added to a blocking query's wait (and Consul's wait/16 of
// jitter) to bound the HTTP request: a request that outlasts it is stuck on
// a dead connection.
const requestSlack = 10 * time.Second

// WatchOptions tunes a Watcher. The zero value of every field is a usable
// default.
type WatchOptions struct {
	// Logger gets the watcher's logs. Default: none.
	Logger *zap.Logger
	// StartTimeout bounds the first query, made by Start. Default 10s.
	StartTimeout time.Duration
	// Rate and Burst are the token bucket that limits queries. Default 2
	// per second, burst 2: a change after a quiet period is seen at once,
	// and a storm of writes costs at most 2 queries a second.
	Rate  rate.Limit
	Burst int
	// BackoffBase and BackoffMax shape the retry delays after errors: the
	// n-th consecutive failure waits a random time in [d/2, d], d being
	// BackoffBase*2^(n-1) capped at BackoffMax (retry.Delay). Defaults
	// 500ms and 10s. While Consul cannot be reached at all, it is probed
	// every 250 ms meanwhile, so that its return is seen at once.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (o *WatchOptions) setDefaults() {
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.Rate <= 0 {
		o.Rate = DefaultRate
	}
	if o.Burst <= 0 {
		o.Burst = DefaultBurst
	}
	if o.BackoffBase <= 0 {
		o.BackoffBase = DefaultBackoffBase
	}
	if o.BackoffMax < o.BackoffBase {
		o.BackoffMax = max(DefaultBackoffMax, o.BackoffBase)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Watcher follows the passing instances of one service with blocking
// queries and tells its subscribers of every change. One Watcher can serve
// any number of subscribers; it is safe for concurrent use.
type Watcher struct {
	client *api.Client
	cfg    Config
	addr   string // Consul's address, for logs
	// anonymous is set when no token is configured (nor in the
	// environment): Consul then reads with its anonymous token.
	anonymous bool
	opts      WatchOptions
	logger    atomic.Pointer[zap.Logger]

	// mu guards the set and the subscribers, and is held while subscribers
	// are told of a change, so that each sees every change once and in
	// order.
	mu      sync.Mutex
	set     []Instance
	synced  bool // set holds an answer from Consul
	subs    map[uint64]func([]Instance)
	nextSub uint64

	queries atomic.Int64
	changes atomic.Int64

	startOnce sync.Once
	stopOnce  sync.Once
	cancel    context.CancelFunc
	done      chan struct{}
}

// NewWatcher returns a Watcher of cfg.Service through client. It does
// nothing until Start.
func NewWatcher(client *api.Client, cfg Config, opts *WatchOptions) *Watcher {
	ac := cfg.APIConfig()
	w := &Watcher{client: client, cfg: cfg, addr: ac.Address, anonymous: ac.Token == "" && ac.TokenFile == "", subs: make(map[uint64]func([]Instance))}
	if opts != nil {
		w.opts = *opts
	}
	w.opts.setDefaults()
	w.logger.Store(w.opts.Logger.With(zap.String("service", cfg.Service)))
	return w
}

// SetLogger replaces the logger, for a Watcher that outlives the
// configuration that created it.
func (w *Watcher) SetLogger(l *zap.Logger) {
	if l != nil {
		w.logger.Store(l.With(zap.String("service", w.cfg.Service)))
	}
}

func (w *Watcher) log() *zap.Logger { return w.logger.Load() }

// Start makes the first query, bounded by StartTimeout, so that the set is
// ready when it returns, then follows changes in the background until ctx
// ends or Stop is called.
//
// If Consul refuses the query (ACLs), Start returns an error wrapping
// ErrPermissionDenied, and a 400 answer is returned as an error too: both
// are configuration errors that retrying will not fix. If Consul cannot be
// reached or fails otherwise, Start logs it and returns nil: the watcher
// keeps trying in the background with backoff, and the set is empty until
// Consul answers. A balancer that starts while Consul is down then serves as
// soon as Consul is back, without a restart.
func (w *Watcher) Start(ctx context.Context) error {
	err := errors.New("consul: watcher already started")
	w.startOnce.Do(func() { err = w.start(ctx) })
	return err
}

func (w *Watcher) start(ctx context.Context) error {
	fctx, cancel := context.WithTimeout(ctx, w.opts.StartTimeout)
	entries, meta, err := w.query(fctx, 0)
	cancel()
	if err != nil && permanent(err) {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	w.cancel = stop
	w.done = make(chan struct{})
	st := w.newLoopState()
	if err != nil {
		st.fail(w, err)
	} else {
		st.index = nextIndex(0, meta.LastIndex)
		w.apply(entries)
	}
	go w.loop(runCtx, st)
	return nil
}

// Stop ends the background loop and waits for it. Subscribers are not told.
func (w *Watcher) Stop() {
	w.startOnce.Do(func() {}) // a Watcher stopped before Start never starts
	w.stopOnce.Do(func() {
		if w.cancel != nil {
			w.cancel()
			<-w.done
		}
	})
}

// Instances returns the current set, sorted by ID; callers must not modify
// it. It is empty until Consul first answers.
func (w *Watcher) Instances() []Instance {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.set
}

// Synced reports whether Consul has answered at least once.
func (w *Watcher) Synced() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.synced
}

// Subscribe calls f with the current set, if Consul has answered yet, and
// then with every new set. f runs on the watcher's goroutine and must not
// block, nor call Subscribe or the returned cancel. cancel stops the calls;
// once it returns f is not running and will not be called again.
func (w *Watcher) Subscribe(f func([]Instance)) (cancel func()) {
	w.mu.Lock()
	id := w.nextSub
	w.nextSub++
	w.subs[id] = f
	if w.synced {
		f(w.set)
	}
	w.mu.Unlock()
	return func() {
		w.mu.Lock()
		delete(w.subs, id)
		w.mu.Unlock()
	}
}

// Queries is the number of queries sent to Consul so far.
func (w *Watcher) Queries() int64 { return w.queries.Load() }

// Changes is the number of changes subscribers were told of.
func (w *Watcher) Changes() int64 { return w.changes.Load() }

// loopState is what the loop carries from one query to the next.
type loopState struct {
	index       uint64
	outage      retry.Outage
	unreachable bool // the last failure never got an answer from Consul
}

func (w *Watcher) newLoopState() loopState {
	return loopState{outage: retry.Outage{
		Logger:    w.log(),
		Failed:    "consul query failed; keeping the last known backends and retrying with backoff",
		Recovered: "consul answers again",
		Level:     zapcore.ErrorLevel,
		Now:       w.opts.Now,
	}}
}

// fail records a failed query; the first of a series is logged as the
// start of an outage, the others only at debug level.
func (st *loopState) fail(w *Watcher, err error) {
	st.index = 0 // start again from the current state when Consul is back
	var se api.StatusError
	st.unreachable = !errors.As(err, &se)
	w.mu.Lock()
	n := len(w.set)
	w.mu.Unlock()
	st.outage.Fail(err, zap.String("consul", w.addr), zap.Int("backends", n))
}

func (w *Watcher) loop(ctx context.Context, st loopState) {
	defer close(w.done)
	limiter := rate.NewLimiter(w.opts.Rate, w.opts.Burst)
	for {
		if n := st.outage.Failures(); n > 0 && !w.pause(ctx, retry.Delay(w.opts.BackoffBase, w.opts.BackoffMax, n), st.unreachable) {
			return
		}
		if limiter.Wait(ctx) != nil {
			return
		}
		entries, meta, err := w.query(ctx, st.index)
		if err == nil && len(entries) == 0 && st.index > 0 && len(w.Instances()) > 0 {
			// Before emptying the set, ask again without blocking: a
			// token that lost its rights gets an empty answer from
			// Consul's streaming backend with no sign of filtering,
			// which a plain read shows.
			entries, meta, err = w.query(ctx, 0)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			st.fail(w, err)
			continue
		}
		st.outage.OK()
		st.index = nextIndex(st.index, meta.LastIndex)
		w.apply(entries)
	}
}

// probeInterval is how often a watcher whose Consul cannot be reached asks
// whether it is back. A refused connection costs Consul nothing, and an
// agent that is back then answers its watchers within this, not after the
// rest of a backoff that has grown to BackoffMax meanwhile.
const probeInterval = 250 * time.Millisecond

// pause waits d after a failed query, or less when Consul could not be
// reached and is back with a leader before d has passed. Consul answering
// with errors gets the full backoff: it is up, and may be overloaded. pause
// reports false if ctx ended.
func (w *Watcher) pause(ctx context.Context, d time.Duration, unreachable bool) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	var probe <-chan time.Time
	if unreachable {
		tick := time.NewTicker(probeInterval)
		defer tick.Stop()
		probe = tick.C
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
			return true
		case <-probe:
			if w.leaderKnown(ctx) {
				return true
			}
		}
	}
}

// leaderKnown asks Consul, briefly, whether it answers and has a leader.
func (w *Watcher) leaderKnown(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, probeInterval)
	defer cancel()
	leader, err := w.client.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
	return err == nil && leader != ""
}

// query asks Consul for the passing instances, blocking from index (0: do
// not block).
func (w *Watcher) query(ctx context.Context, index uint64) ([]*api.ServiceEntry, *api.QueryMeta, error) {
	q := w.cfg.queryOptions(index)
	if index > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, q.WaitTime+q.WaitTime/16+requestSlack)
		defer cancel()
	}
	w.queries.Add(1)
	entries, meta, err := w.client.Health().Service(w.cfg.Service, w.cfg.Tag, true, q.WithContext(ctx))
	if err != nil {
		return nil, nil, w.classify(err)
	}
	if len(entries) == 0 {
		switch {
		case meta.ResultsFilteredByACLs:
			// Consul answers an under-privileged read of a list with
			// an empty list rather than 403. Acting on it would empty
			// the pool.
			return nil, nil, fmt.Errorf("%w: every instance of service %q was filtered out by ACLs (the token lacks service:read or node:read)",
				ErrPermissionDenied, w.cfg.Service)
		case meta.DefaultACLPolicy == "deny" && w.anonymous:
			// An anonymous read of a service it may not show gets an
			// empty list with no sign of filtering. Without a token on
			// a default-deny cluster that is far more likely than an
			// empty service. (Clusters that grant the anonymous token
			// service:read are the exception: give a token there.)
			return nil, nil, fmt.Errorf("%w: no ACL token, and the cluster's default ACL policy is deny: reading service %q showed no instances",
				ErrPermissionDenied, w.cfg.Service)
		}
	}
	return entries, meta, nil
}

// classify wraps query errors: ACL refusals as ErrPermissionDenied, the
// rest with what was being done.
func (w *Watcher) classify(err error) error {
	var se api.StatusError
	if errors.As(err, &se) && (se.Code == http.StatusForbidden || se.Code == http.StatusUnauthorized) {
		return fmt.Errorf("%w: reading service %q: %d %s", ErrPermissionDenied, w.cfg.Service, se.Code, se.Body)
	}
	return fmt.Errorf("consul: reading service %q: %w", w.cfg.Service, err)
}

// permanent reports whether a failure of the first query is a configuration
// error that Start reports instead of retrying.
func permanent(err error) bool {
	if errors.Is(err, ErrPermissionDenied) {
		return true
	}
	var se api.StatusError
	return errors.As(err, &se) && se.Code == http.StatusBadRequest
}

// apply publishes a new answer if it changes the set.
func (w *Watcher) apply(entries []*api.ServiceEntry) {
	set, skipped := Instances(entries)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.synced && equalInstances(w.set, set) {
		return
	}
	added, removed := diffIDs(w.set, set)
	first := !w.synced
	w.set, w.synced = set, true
	w.changes.Add(1)
	switch {
	case first || len(added) > 0 || len(removed) > 0:
		w.log().Info("consul backends changed",
			zap.Int("backends", len(set)),
			zap.Strings("added", added),
			zap.Strings("removed", removed),
			zap.Int("skipped_without_address", skipped))
	default:
		if c := w.log().Check(zapcore.DebugLevel, "consul backends updated"); c != nil {
			c.Write(zap.Int("backends", len(set)))
		}
	}
	for _, f := range w.subs {
		f(set)
	}
}

// nextIndex applies Consul's rules to the X-Consul-Index of an answer to a
// query sent with index prev, and returns the index of the next query.
func nextIndex(prev, got uint64) uint64 {
	switch {
	case got < prev:
		// The index went backwards (snapshot restore, reset or replaced
		// agent): blocking on the old one could miss changes for a whole
		// wait. Start again with a query that does not block.
		return 0
	case got == 0:
		// Never valid, but seen: 0 would make every query return at once.
		return 1
	}
	return got
}
