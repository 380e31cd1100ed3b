package balancer

import (
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Backend is the long-lived state of one backend server, shared by every
// handler (and every config generation) that sends connections to it. It is
// keyed by dial address in a BackendStore so that counts survive config
// reloads. It must not be copied.
type Backend struct {
	addr string

	// live counts the WebSocket connections this process currently relays
	// to the backend, from the 101 answer until either side closes.
	live atomic.Int64
	// assigned counts the assignments handed out lately (assign mode)
	// that the reports may not include yet: not a baseline, since a report
	// may have been taken before the clients connected, but a window that
	// reports only shorten. See recentCount.
	assigned recentCount

	// failedUntil is when a passive health mark expires (unix nanoseconds);
	// zero means healthy.
	failedUntil atomic.Int64

	// drained is set by an operator (admin API) to keep new connections
	// away; see SetDrainedByOperator.
	drained atomic.Bool

	report atomic.Pointer[loadReport]
	// liveScale is the float64 bits of the factor Load applies to this
	// process's connections since the last report (0 means 1): see
	// shareEstimator.
	liveScale atomic.Uint64

	// history is this process's live count over its last changes, kept
	// once reports say when their count was taken (see ObserveReport).
	history atomic.Pointer[liveHistory]

	// relays are the connections this process relays to the backend, so
	// that they can be closed gracefully (shutdown, draining).
	mu     sync.Mutex
	relays relayList

	connsTotal atomic.Uint64
	bytesUp    atomic.Uint64 // client to backend
	bytesDown  atomic.Uint64 // backend to client
}

// loadReport is the backend's own view of its load, as published through
// service discovery.
type loadReport struct {
	connections int64
	capacity    int64
	version     uint64
	// baseline is this process's live count at the moment the backend
	// took the report's count (or, for a report that does not say when,
	// when it arrived): everything above it was opened after the snapshot
	// and is not included in it. (Recent assignments are held on top for
	// their own time instead.)
	baseline int64
	at       time.Time
}

// NewBackend returns state for the backend at addr (host:port). Most callers
// get Backends from a BackendStore instead, so that state is shared.
func NewBackend(addr string) *Backend { return &Backend{addr: addr} }

// Addr is the backend's dial address, host:port.
func (b *Backend) Addr() string { return b.addr }

// Live is the number of connections this process relays to the backend now.
func (b *Backend) Live() int64 { return b.live.Load() }

// Load is the number of connections the balancer believes the backend holds:
// its last reported count plus what this process has opened to it since that
// report (minus what it closed), plus what this process assigned to it within
// the assignments' hold. Without a report it is this process's own count,
// which is exact for a single balancer.
func (b *Backend) Load() int64 {
	live, held := b.live.Load(), b.assigned.estimate()
	r := b.report.Load()
	if r == nil {
		return live + held
	}
	since := live - r.baseline
	if since > 0 {
		// Stand in for the other balancers' connections since the
		// snapshot too; see shareEstimator.
		if f := math.Float64frombits(b.liveScale.Load()); f > 1 {
			since = int64(math.Ceil(float64(since) * f))
		}
	}
	return max(0, r.connections+since) + held
}

// setLiveScale sets the factor by which Load scales this process's
// connections opened since the last report's snapshot.
func (b *Backend) setLiveScale(f float64) { b.liveScale.Store(math.Float64bits(f)) }

// Capacity is the capacity the backend reported, or 0 when unknown.
func (b *Backend) Capacity() int64 {
	if r := b.report.Load(); r != nil {
		return r.capacity
	}
	return 0
}

// Reported returns the backend's last reported count and when it was taken
// in; ok is false when the backend never reported.
func (b *Backend) Reported() (connections int64, at time.Time, ok bool) {
	r := b.report.Load()
	if r == nil {
		return 0, time.Time{}, false
	}
	return r.connections, r.at, true
}

// Report is a backend's load report, as published through service
// discovery.
type Report struct {
	// Connections is the backend's live connection count.
	Connections int64
	// Capacity is the most connections it accepts; 0 means unknown.
	Capacity int64
	// Version identifies the report (for Consul, the service's
	// ModifyIndex): a report seen again with the same version is ignored,
	// so that this process's baseline is taken only once per report.
	Version uint64
	// TakenAt is when the backend read Connections, by its clock; zero
	// when the report does not say.
	TakenAt time.Time
}

// ObserveReport records a load report from the backend, taken in at now.
//
// The report's count holds the connections this process opened before the
// backend's snapshot, and not those after. With TakenAt, the baseline is
// this process's live count at that moment (from a short history of its
// changes), so the connections opened while the report was on its way
// (published, written through Consul, read by the watch) count once, in
// the live part. Without it, the baseline is the live count now, which
// leaves those connections out of both terms until the next report.
//
// Clocks: TakenAt is the backend's wall clock, compared with this
// process's. A skew of s misplaces the snapshot by s: the connections this
// process opened to the backend within s of it are counted twice (backend
// clock behind) or not at all (ahead) until the next report. NTP keeps s
// to milliseconds, a few connections at the very most; a TakenAt in the
// future is read as now.
func (b *Backend) ObserveReport(rep Report, now time.Time) {
	prev := b.report.Load()
	if prev != nil && prev.version == rep.Version && prev.connections == rep.Connections && prev.capacity == rep.Capacity {
		return
	}
	var growth int64
	if prev != nil {
		growth = rep.Connections - prev.connections
	}
	b.report.Store(&loadReport{
		connections: rep.Connections,
		capacity:    rep.Capacity,
		version:     rep.Version,
		baseline:    b.liveAt(rep.TakenAt, now),
		at:          now,
	})
	b.assigned.reported(now, growth)
}

// liveAt returns this process's live count at taken (now if taken is zero
// or not before now), and starts the history that later reports read.
func (b *Backend) liveAt(taken, now time.Time) int64 {
	h := b.history.Load()
	if taken.IsZero() {
		return b.live.Load()
	}
	if h == nil {
		// The first timed report: no history to read yet. From now on
		// every change is recorded.
		h = &liveHistory{}
		h.mu.Lock()
		if !b.history.CompareAndSwap(nil, h) {
			h.mu.Unlock()
			return b.liveAt(taken, now)
		}
		h.start = b.live.Load()
		h.mu.Unlock()
		return h.start
	}
	ago := now.Sub(taken)
	h.mu.Lock()
	defer h.mu.Unlock()
	if ago <= 0 {
		return b.live.Load()
	}
	return h.at(monotonic(now)-ago, h.start)
}

// addLive changes this process's live count by delta and returns the new
// count, recording the change when reports read the history.
func (b *Backend) addLive(delta int64) int64 {
	h := b.history.Load()
	if h == nil {
		return b.live.Add(delta)
	}
	h.mu.Lock()
	n := b.live.Add(delta)
	h.record(monotonic(time.Now()), n)
	h.mu.Unlock()
	return n
}

// ForgetReport drops the backend's report, returning to local counting.
func (b *Backend) ForgetReport() { b.report.Store(nil) }

// Healthy reports whether no passive health mark is in force at now.
func (b *Backend) Healthy(now time.Time) bool {
	until := b.failedUntil.Load()
	return until == 0 || now.UnixNano() >= until
}

// MarkDown keeps new connections away from the backend for d, after a dial or
// handshake failure.
func (b *Backend) MarkDown(now time.Time, d time.Duration) {
	b.failedUntil.Store(now.Add(d).UnixNano())
}

// MarkUp clears a passive health mark, after a successful handshake.
func (b *Backend) MarkUp() {
	if b.failedUntil.Load() != 0 {
		b.failedUntil.Store(0)
	}
}

// Stats is a snapshot of a backend's counters, for metrics and the admin API.
type Stats struct {
	Addr        string `json:"address"`
	Live        int64  `json:"live"`
	Load        int64  `json:"load"`
	Reported    *int64 `json:"reported,omitempty"`
	Capacity    int64  `json:"capacity,omitempty"`
	Healthy     bool   `json:"healthy"`
	ConnsTotal  uint64 `json:"connections_total"`
	BytesUp     uint64 `json:"bytes_up"`
	BytesDown   uint64 `json:"bytes_down"`
	AssignedNow int64  `json:"assigned,omitempty"`
}

// Stats returns a snapshot of the backend's counters.
func (b *Backend) Stats(now time.Time) Stats {
	s := Stats{
		Addr:        b.addr,
		Live:        b.live.Load(),
		Load:        b.Load(),
		Capacity:    b.Capacity(),
		Healthy:     b.Healthy(now),
		ConnsTotal:  b.connsTotal.Load(),
		BytesUp:     b.bytesUp.Load(),
		BytesDown:   b.bytesDown.Load(),
		AssignedNow: b.assigned.count(),
	}
	if n, _, ok := b.Reported(); ok {
		s.Reported = &n
	}
	return s
}

// connClosed ends one relayed connection (reserve began it).
func (b *Backend) connClosed() { b.addLive(-1) }

func (b *Backend) track(r *relay) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// A relay that is closing may have been untracked already (its finish
	// ran first); adding it now would keep it forever.
	if r.closing.Load() {
		return
	}
	b.relays.push(r)
}

func (b *Backend) untrack(r *relay) {
	b.mu.Lock()
	b.relays.remove(r)
	b.mu.Unlock()
}

// relayList is the list of the relays of a Backend, linked through the
// relays themselves: a map cost ~65 bytes per connection, the links 16.
// Its methods are called with Backend.mu held.
type relayList struct {
	head *relay
}

func (l *relayList) push(r *relay) {
	if r.tracked {
		return
	}
	r.tracked, r.prev, r.next = true, nil, l.head
	if l.head != nil {
		l.head.prev = r
	}
	l.head = r
}

func (l *relayList) remove(r *relay) {
	if !r.tracked {
		return
	}
	if r.prev != nil {
		r.prev.next = r.next
	} else {
		l.head = r.next
	}
	if r.next != nil {
		r.next.prev = r.prev
	}
	r.tracked, r.prev, r.next = false, nil, nil
}

// collect returns the relays for which keep reports true, at most max of
// them (all if max <= 0).
func (l *relayList) collect(max int, keep func(*relay) bool) []*relay {
	var out []*relay
	for r := l.head; r != nil && (max <= 0 || len(out) < max); r = r.next {
		if keep == nil || keep(r) {
			out = append(out, r)
		}
	}
	return out
}

// CloseConnections closes up to max (all if max <= 0) of the connections
// this process relays to the backend, sending both sides a close frame with
// code and reason where the streams allow. It returns how many it closed.
func (b *Backend) CloseConnections(code uint16, reason string, max int) int {
	b.mu.Lock()
	victims := b.relays.collect(max, nil)
	b.mu.Unlock()
	for _, r := range victims {
		r.closeWith(code, reason)
	}
	return len(victims)
}
