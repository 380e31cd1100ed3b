package balancer

import (
	"fmt"
	"net/http"
	"time"
)

// Defaults of ProxyOptions and AssignOptions that the two modes share.
const (
	// DefaultMaxAttempts bounds the backends tried for one upgrade or
	// assignment.
	DefaultMaxAttempts = 3
	// DefaultRetryAfter is sent with 503 answers.
	DefaultRetryAfter = 5 * time.Second
)

// chooser is the choose-and-retry loop of proxy and assign modes: take the
// best upstream not tried yet, reserve it against its limit, try it, and on
// failure go on to the next, at most maxAttempts upstreams in all. What a
// reservation and a try are differs between the modes; the loop, its bound
// and its 503 do not.
type chooser struct {
	pick        pickFunc
	maxAttempts int
	retryAfter  string // the 503's Retry-After, rendered once
}

// pickFunc chooses an upstream among the available ones of ups at now,
// skipping those skip reports, or returns nil: LeastLoaded, TwoChoices, or
// an affinity selection.
type pickFunc = func(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream

func newChooser(pick pickFunc, maxAttempts *int, retryAfter *time.Duration) chooser {
	if *maxAttempts <= 0 {
		*maxAttempts = DefaultMaxAttempts
	}
	if *retryAfter <= 0 {
		*retryAfter = DefaultRetryAfter
	}
	return chooser{pick: pick, maxAttempts: *maxAttempts, retryAfter: RetryAfterSeconds(*retryAfter)}
}

// choose runs the loop over ups. reserve counts a chosen upstream against
// its limit, or reports that it filled up meanwhile (a concurrent choice
// took the last place), which moves on without counting as a failure. try
// works with a reserved upstream; it returns next != nil when the upstream
// failed and the loop should go on (it has released the reservation), else
// the call's result.
//
// pick, if not nil, chooses for this call instead of the chooser's
// policy: affinity picks per request, by the request's key and cookie.
//
// choose returns done with try's result, or, when no try ended the call,
// the last failure (nil if no upstream was available to try at all) and
// how many upstreams it chose.
func (c chooser) choose(ups []*Upstream, now time.Time, pick pickFunc, reserve func(*Upstream) bool, try func(*Upstream) (result, next error)) (result error, done bool, lastErr error, chosen int) {
	if pick == nil {
		pick = c.pick
	}
	var tried triedSet
	for len(tried.list) < c.maxAttempts {
		u := pick(ups, now, tried.has)
		if u == nil {
			break
		}
		tried.add(u)
		if !reserve(u) {
			continue
		}
		result, next := try(u)
		if next == nil {
			return result, true, nil, len(tried.list)
		}
		lastErr = next
	}
	return nil, false, lastErr, len(tried.list)
}

// unavailable is the answer when every upstream is full, down or draining.
func (c chooser) unavailable(ups []*Upstream) *Error {
	return &Error{
		Status: http.StatusServiceUnavailable,
		Header: http.Header{"Retry-After": {c.retryAfter}},
		Err:    fmt.Errorf("no backend available: all %d are full, down or draining", len(ups)),
	}
}
