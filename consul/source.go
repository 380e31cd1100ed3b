package consul

import (
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// SourceOptions configures a Source. The zero value is usable.
type SourceOptions struct {
	// MaxConns caps every backend's load (the handler's max_conns); 0 means
	// no cap beyond the capacity a backend reports.
	MaxConns int64
	// BackendScheme is the scheme of the upstreams' URLs: "ws" (default)
	// or "wss" (the balancer dials the backends over TLS).
	BackendScheme string
	// Logger gets warnings about malformed meta. Default: none.
	Logger *zap.Logger
	// Now is the clock stamped on load reports; default time.Now.
	Now func() time.Time
}

// Source is a balancer.UpstreamSource over the instances a Watcher sees.
// On every change it publishes a new set of Upstreams in its Pool, over
// Backends acquired from a BackendStore by dial address (released when the
// instance leaves the passing set), and passes each instance's load report
// to its Backend.
//
// An instance that leaves the set (deregistered, critical, in maintenance)
// gets no new connections; the connections already relayed to it are not
// touched: they hold their own references to the Backend.
type Source struct {
	store       balancer.BackendStore
	opts        SourceOptions
	pool        balancer.Pool
	unsubscribe func()

	mu     sync.Mutex
	held   map[string]*balancer.Backend // by dial address
	closed bool
}

// NewSource subscribes a new Source to w. If w has synced, the Source's set
// is ready when NewSource returns.
func NewSource(w *Watcher, store balancer.BackendStore, opts *SourceOptions) *Source {
	s := &Source{store: store, held: make(map[string]*balancer.Backend)}
	if opts != nil {
		s.opts = *opts
	}
	if s.opts.Logger == nil {
		s.opts.Logger = zap.NewNop()
	}
	if s.opts.Now == nil {
		s.opts.Now = time.Now
	}
	if s.opts.BackendScheme == "" {
		s.opts.BackendScheme = "ws"
	}
	s.unsubscribe = w.Subscribe(s.update)
	return s
}

// Upstreams returns the current set; callers must not modify it.
func (s *Source) Upstreams() []*balancer.Upstream { return s.pool.Upstreams() }

// Close stops following the watcher and releases the Backends the Source
// holds. The last set stays readable, so that requests still being served
// by a configuration that is going away do not fail.
func (s *Source) Close() {
	s.unsubscribe() // after this, update is not running and will not run
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for addr := range s.held {
		s.store.Release(addr)
	}
	s.held = nil
}

// update publishes the Upstreams of a new set of instances.
func (s *Source) update(set []Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	now := s.opts.Now()
	ups := make([]*balancer.Upstream, 0, len(set))
	seen := make(map[string]bool, len(set))
	for _, in := range set {
		if seen[in.Addr] {
			// Two registrations of one address are one backend: counting
			// it twice would double its share.
			s.opts.Logger.Warn("consul: two instances share a dial address; using the first",
				zap.String("address", in.Addr), zap.String("ignored_id", in.ID))
			continue
		}
		seen[in.Addr] = true
		b := s.held[in.Addr]
		if b == nil {
			b = s.store.Acquire(in.Addr)
			s.held[in.Addr] = b
		}
		ups = append(ups, s.upstream(in, b, now))
	}
	s.pool.Set(ups)
	for addr := range s.held {
		if !seen[addr] {
			s.store.Release(addr)
			delete(s.held, addr)
		}
	}
}

// upstream builds the Upstream of one instance and records its load report.
func (s *Source) upstream(in Instance, b *balancer.Backend, now time.Time) *balancer.Upstream {
	u := &balancer.Upstream{
		Backend:        b,
		ID:             in.ID,
		URL:            &url.URL{Scheme: s.opts.BackendScheme, Host: in.Addr, Path: "/"},
		MaxConns:       s.opts.MaxConns,
		DrainAnnounced: strings.EqualFold(in.Meta[protocol.MetaDraining], "true"),
	}
	if raw := in.Meta[protocol.MetaURL]; raw != "" {
		if pu, err := url.Parse(raw); err == nil && (pu.Scheme == "ws" || pu.Scheme == "wss") && pu.Host != "" {
			u.PublicURL = raw
		} else {
			s.opts.Logger.Warn("consul: ignoring malformed meta "+protocol.MetaURL,
				zap.String("id", in.ID), zap.String("value", raw))
		}
	}
	capacity, okCap := s.metaCount(in, protocol.MetaCapacity)
	conns, okConns := s.metaCount(in, protocol.MetaConnections)
	switch {
	case okConns:
		b.ObserveReport(balancer.Report{Connections: conns, Capacity: capacity, Version: in.ModifyIndex, TakenAt: s.countedAt(in)}, now)
	default:
		// No count: the balancer counts alone. A capacity given without a
		// count still caps the backend.
		b.ForgetReport()
		if okCap && capacity > 0 && (u.MaxConns == 0 || capacity < u.MaxConns) {
			u.MaxConns = capacity
		}
	}
	return u
}

// metaCount reads a non-negative integer from the instance's meta; ok is
// false when the key is absent or malformed (which is logged).
func (s *Source) metaCount(in Instance, key string) (n int64, ok bool) {
	raw, present := in.Meta[key]
	if !present {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(raw), 10, 64)
	if err != nil || n < 0 {
		s.opts.Logger.Warn("consul: ignoring malformed meta "+key,
			zap.String("id", in.ID), zap.String("value", raw))
		return 0, false
	}
	return n, true
}

// countedAt reads when the backend took its count, or zero when the meta
// is absent or malformed (which is logged).
func (s *Source) countedAt(in Instance) time.Time {
	ms, ok := s.metaCount(in, protocol.MetaCountedAt)
	if !ok {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// Interface guards
var _ balancer.UpstreamSource = (*Source)(nil)
