package consultest

import (
	"maps"
	"slices"
	"time"

	"go.uber.org/zap"
)

// maxTimerSleep bounds the timer loop's sleep when nothing is due.
const maxTimerSleep = time.Minute

// loop runs the agent's timers, all measured on Options.Now: TTL expiry,
// the deferred syncs of output-only check updates, and the reaper of
// services critical for too long. One goroutine sleeps until the earliest
// deadline; API calls that move deadlines wake it through kick.
func (a *Agent) loop() {
	defer a.bg.Done()
	a.mu.Lock()
	a.nextReap = a.now().Add(a.opts.ReapInterval)
	a.mu.Unlock()

	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-a.quit:
			return
		case <-a.kick:
		case <-t.C:
		}
		t.Reset(a.runTimers())
	}
}

// Tick fires at once every timer due by Options.Now: TTL expiry, deferred
// check-output syncs and the reaper (if its interval has passed). The timer
// loop does this by itself; with an injected clock, calling Tick right after
// moving the clock makes tests deterministic instead of waiting for the loop.
func (a *Agent) Tick() {
	a.runTimers()
}

// runTimers fires every timer that is due and returns how long to sleep
// until the next one.
func (a *Agent) runTimers() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.now()
	next := now.Add(maxTimerSleep)
	soonest := func(t time.Time) {
		if !t.IsZero() && t.Before(next) {
			next = t
		}
	}

	for _, id := range slices.Sorted(maps.Keys(a.local.checks)) {
		c := a.local.checks[id]
		if c.ttl > 0 && !c.expires.IsZero() && !now.Before(c.expires) {
			a.expireTTLLocked(c, now)
		}
		soonest(c.expires)
		if !c.deferUntil.IsZero() && !now.Before(c.deferUntil) {
			// Consul's deferred timer marks the check out of sync, so the
			// agent sends it even if nothing changed meanwhile.
			c.deferUntil = time.Time{}
			c.inSync = false
		}
		soonest(c.deferUntil)
	}

	if !now.Before(a.nextReap) {
		a.reapLocked(now)
		a.nextReap = now.Add(a.opts.ReapInterval)
	}
	soonest(a.nextReap)

	a.syncLocked()

	sleep := next.Sub(now)
	if a.injectedClock {
		sleep = min(sleep, fakeClockPoll)
	}
	return max(sleep, 0)
}

// reapLocked is Consul's reapServicesInternal: a service goes when one of its
// checks with deregister_critical_service_after has been critical for longer
// than that.
func (a *Agent) reapLocked(now time.Time) {
	for _, id := range slices.Sorted(maps.Keys(a.local.checks)) {
		c, ok := a.local.checks[id]
		if !ok || c.reapAfter == 0 || c.criticalSince.IsZero() {
			continue
		}
		if critical := now.Sub(c.criticalSince); critical > c.reapAfter {
			a.logger.Info("check has been critical for too long; deregistered service",
				zap.String("check", id), zap.String("service", c.check.ServiceID), zap.Duration("critical_for", critical))
			a.local.removeService(c.check.ServiceID)
		}
	}
}
