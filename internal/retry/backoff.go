package retry

import (
	"math/rand/v2"
	"time"
)

// Delay is the wait before retrying after the n-th consecutive failure
// (n ≥ 1): base doubled n-1 times, capped at max, then drawn at random in
// [d/2, d] ("equal jitter"), so that clients that failed together do not
// retry in step, while each wait stays at least half the schedule's.
func Delay(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if d <= 1 {
		return d
	}
	half := d / 2
	return half + rand.N(d-half+1)
}

// Backoff counts consecutive failures and yields Delay for each. The zero
// value with Base and Max set is ready to use.
type Backoff struct {
	Base, Max time.Duration
	n         int
}

// Next records a failure and returns how long to wait before retrying.
func (b *Backoff) Next() time.Duration {
	b.n++
	return Delay(b.Base, b.Max, b.n)
}

// Reset starts the schedule again, after a success.
func (b *Backoff) Reset() { b.n = 0 }
