package balancer

import (
	"sync/atomic"
	"time"
)

// A backend drains (takes no new connections or assignments, and keeps
// those it has) for either of two reasons, each with its own mark: it
// announced so itself through discovery (Upstream.DrainAnnounced, from the
// ws_draining meta), or an operator drained it through the admin API
// (DrainedByOperator). Upstream.Draining is the one question selection
// asks: either.

// SetDrainedByOperator marks the backend drained by an operator (or clears
// the mark).
// A drained backend takes no new connections or assignments; the mark lives
// with the shared Backend state, so it survives config reloads. It reports
// whether the mark changed.
func (b *Backend) SetDrainedByOperator(on bool) bool { return b.drained.Swap(on) != on }

// DrainedByOperator reports whether an operator drained the backend.
func (b *Backend) DrainedByOperator() bool { return b.drained.Load() }

// Draining reports whether the upstream takes no new connections: its
// backend announced it is draining, or an operator drained it.
func (u *Upstream) Draining() bool { return u.DrainAnnounced || u.DrainedByOperator() }

// CloseIdle closes, with a close frame carrying code and reason, the
// connections relayed to the backend that moved no byte either way since
// before. It returns how many it closed.
func (b *Backend) CloseIdle(code uint16, reason string, before time.Time) int {
	limit := before.UnixNano()
	b.mu.Lock()
	victims := b.relays.collect(0, func(r *relay) bool { return r.lastActive.Load() < limit })
	b.mu.Unlock()
	for _, r := range victims {
		r.closeWith(code, reason)
	}
	return len(victims)
}

// RelayHook follows one upgrade through a Proxy for its caller: whether a
// relay took the connection, and when that relay ended. Callers that count
// connections (per client IP, say) use it to release their count exactly
// once: at the relay's end if Adopted, otherwise as soon as ServeUpgrade
// returns. Its zero value is not usable; see NewRelayHook.
type RelayHook struct {
	adopted atomic.Bool
	ended   atomic.Bool
	onEnd   func()
}

// NewRelayHook returns a hook calling onEnd once when the adopted relay ends.
func NewRelayHook(onEnd func()) *RelayHook { return &RelayHook{onEnd: onEnd} }

// Adopted reports whether a relay took the connection.
func (h *RelayHook) Adopted() bool { return h != nil && h.adopted.Load() }

func (h *RelayHook) adopt() {
	if h != nil {
		h.adopted.Store(true)
	}
}

func (h *RelayHook) end() {
	if h != nil && h.ended.CompareAndSwap(false, true) && h.onEnd != nil {
		h.onEnd()
	}
}
