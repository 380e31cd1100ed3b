package token

import (
	"encoding/json"
	"net/http"
	"sync/atomic"
)

// reasons are the Reason constants, in the order RejectCounter keeps them,
// followed by "error" (what ReasonOf returns for other errors).
var reasons = [...]string{
	ReasonMissing, ReasonMalformed, ReasonBadSignature, ReasonUnknownKID,
	ReasonAlgMismatch, ReasonExpired, ReasonNotYetValid, ReasonWrongAudience,
	ReasonReplayed, ReasonTooLongLived, ReasonReplayCacheFull, "error",
}

// ReasonOther is the bucket RejectCounter counts unknown reasons in.
const ReasonOther = "other"

// RejectCounter counts rejected tokens by reason, for a backend's metrics.
// Give its OnReject method to MiddlewareOptions.OnReject. It is an
// expvar.Var, so
//
//	expvar.Publish("ws_token_rejections", counter)
//
// serves the counts as JSON at /debug/vars; a Prometheus exporter can read
// Counts at scrape time.
//
// The zero value is ready to use; it is safe for concurrent use and must not
// be copied.
type RejectCounter struct {
	counts [len(reasons) + 1]atomic.Uint64 // the last one is ReasonOther

	// Next, if set, is called after each rejection is counted, for logs.
	// It must not write to the response.
	Next func(r *http.Request, reason string)
}

// OnReject counts one rejection and calls Next.
func (c *RejectCounter) OnReject(r *http.Request, reason string) {
	c.counts[reasonIndex(reason)].Add(1)
	if c.Next != nil {
		c.Next(r, reason)
	}
}

// Count returns how many rejections had reason (ReasonOther for the
// reasons this package does not define).
func (c *RejectCounter) Count(reason string) uint64 {
	return c.counts[reasonIndex(reason)].Load()
}

// Total returns the number of rejections counted.
func (c *RejectCounter) Total() uint64 {
	var n uint64
	for i := range c.counts {
		n += c.counts[i].Load()
	}
	return n
}

// Counts returns the non-zero counts by reason.
func (c *RejectCounter) Counts() map[string]uint64 {
	m := make(map[string]uint64)
	for i := range c.counts {
		if n := c.counts[i].Load(); n > 0 {
			m[reasonName(i)] = n
		}
	}
	return m
}

// String returns the counts as a JSON object, as expvar.Var requires.
func (c *RejectCounter) String() string {
	b, _ := json.Marshal(c.Counts()) // a map of strings to numbers always encodes
	return string(b)
}

func reasonIndex(reason string) int {
	for i, r := range reasons {
		if r == reason {
			return i
		}
	}
	return len(reasons)
}

func reasonName(i int) string {
	if i < len(reasons) {
		return reasons[i]
	}
	return ReasonOther
}
