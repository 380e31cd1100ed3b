package wsbackend

import (
	"math/rand/v2"
	"time"
)

// LeastLoaded returns the available upstream with the lowest load, or nil if
// none is available. Ties are broken uniformly at random by reservoir
// sampling, never by list order, so that equal backends fill evenly. skip,
// if not nil, excludes upstreams (those already tried by a retry).
func LeastLoaded(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	var best *Upstream
	var bestLoad int64
	ties := 0
	for _, u := range ups {
		if (skip != nil && skip(u)) || !u.Available(now) {
			continue
		}
		load := u.Load()
		switch {
		case best == nil || load < bestLoad:
			best, bestLoad, ties = u, load, 1
		case load == bestLoad:
			ties++
			if rand.IntN(ties) == 0 {
				best = u
			}
		}
	}
	return best
}

// TwoChoices picks two distinct available upstreams at random and returns
// the less loaded ("power of two choices"). Unlike LeastLoaded it does not
// send a burst to one backend while load reports lag behind: the least
// loaded one is only likely, not certain, to be chosen.
func TwoChoices(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	var a, b *Upstream
	seen := 0
	// Reservoir-sample two available upstreams in one pass.
	for _, u := range ups {
		if (skip != nil && skip(u)) || !u.Available(now) {
			continue
		}
		seen++
		switch {
		case seen == 1:
			a = u
		case seen == 2:
			b = u
		default:
			if i := rand.IntN(seen); i == 0 {
				a = u
			} else if i == 1 {
				b = u
			}
		}
	}
	if b == nil || a.Load() < b.Load() {
		return a
	}
	if b.Load() < a.Load() || rand.IntN(2) == 0 {
		return b
	}
	return a
}

// triedSet is the upstreams a retry loop has tried, to skip on the next
// attempt; a few at most, so a slice.
type triedSet struct{ list []*Upstream }

func (t *triedSet) add(u *Upstream) { t.list = append(t.list, u) }

func (t *triedSet) has(u *Upstream) bool {
	for _, x := range t.list {
		if x == u {
			return true
		}
	}
	return false
}
