package token_test

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func TestReplayCache(t *testing.T) {
	t.Parallel()
	const s, ms = time.Second, time.Millisecond
	type step struct {
		jti        string
		until, now time.Duration // after t0
		want       error
		len        int // Len() afterwards
	}
	tests := []struct {
		name  string
		max   int
		steps []step
	}{
		{"single use until expiry, then forgotten", 10, []step{
			{"a", 10 * s, 0, nil, 1},
			{"a", 10 * s, 5 * s, token.ErrReplayed, 1},
			{"a", 10 * s, 9 * s, token.ErrReplayed, 1},
			{"b", 20 * s, 10 * s, nil, 1}, // a is forgotten at its until
			{"a", 10 * s, 10 * s, nil, 1}, // and not stored again: already past
		}},
		{"sub-second until is kept to the end", 10, []step{
			{"a", 10*s - ms, 0, nil, 1},
			{"a", 10*s - ms, 9*s + 500*ms, token.ErrReplayed, 1},
			{"a", 10*s - ms, 10 * s, nil, 0},
		}},
		{"full of live entries fails closed", 2, []step{
			{"a", 10 * s, 0, nil, 1},
			{"b", 10 * s, 0, nil, 2},
			{"c", 10 * s, 1 * s, token.ErrReplayCacheFull, 2},
			{"a", 10 * s, 1 * s, token.ErrReplayed, 2}, // a replay is still reported as one
			{"c", 20 * s, 10 * s, nil, 1},              // a and b expired: room again
		}},
		{"full: expired entries are evicted first, in expiry order", 3, []step{
			{"a", 5 * s, 0, nil, 1},
			{"b", 30 * s, 0, nil, 2},
			{"c", 6 * s, 0, nil, 3},
			{"d", 30 * s, 5 * s, nil, 3}, // a goes
			{"e", 30 * s, 5 * s, token.ErrReplayCacheFull, 3},
			{"e", 30 * s, 6 * s, nil, 3}, // c goes
			{"b", 30 * s, 29 * s, token.ErrReplayed, 3},
		}},
		{"already expired is not stored", 1, []step{
			{"a", 0, 0, nil, 0},
			{"b", -5 * s, 0, nil, 0},
			{"c", 1 * s, 0, nil, 1},
		}},
		{"clock going backwards keeps entries", 10, []step{
			{"a", 10 * s, 5 * s, nil, 1},
			{"b", 10 * s, -100 * s, nil, 2},
			{"a", 10 * s, -100 * s, token.ErrReplayed, 2},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := token.NewReplayCache(tt.max)
			for i, st := range tt.steps {
				err := c.Use(st.jti, t0.Add(st.until), t0.Add(st.now))
				if !errors.Is(err, st.want) || (st.want == nil) != (err == nil) {
					t.Fatalf("step %d %+v: err = %v", i, st, err)
				}
				if n := c.Len(); n != st.len {
					t.Fatalf("step %d %+v: Len = %d, want %d", i, st, n, st.len)
				}
			}
		})
	}
}

// TestReplayCacheBounded pushes 200,000 IDs through a small cache over a
// simulated 800 seconds: it never holds more than its capacity, and its memory does
// not grow with the number of IDs seen.
func TestReplayCacheBounded(t *testing.T) {
	t.Parallel()
	const max = 1000
	c := token.NewReplayCache(max)
	var full int
	for i := 0; i < 200_000; i++ {
		now := t0.Add(time.Duration(i) * 4 * time.Millisecond) // 250 per second
		err := c.Use(fmt.Sprint(i), now.Add(5*time.Second), now)
		switch {
		case errors.Is(err, token.ErrReplayCacheFull):
			full++
		case err != nil:
			t.Fatal(err)
		}
		if c.Len() > max {
			t.Fatalf("Len %d exceeds %d", c.Len(), max)
		}
	}
	// 250/s for 5-6s is at most 1,500 live IDs: over capacity for part of
	// each second, so some fail closed, but most succeed.
	if full == 0 || full > 100_000 {
		t.Fatalf("%d of 200,000 rejected as full", full)
	}
	t.Logf("%d of 200,000 rejected as full (capacity %d, 1,250-1,500 live)", full, max)
}

func TestReplayCacheDefaultSize(t *testing.T) {
	t.Parallel()
	c := token.NewReplayCache(0)
	now := t0
	for i := 0; i < token.DefaultReplayCacheSize; i++ {
		if err := c.Use(fmt.Sprint(i), now.Add(time.Minute), now); err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
	}
	if err := c.Use("one more", now.Add(time.Minute), now); !errors.Is(err, token.ErrReplayCacheFull) {
		t.Fatalf("over default size: %v", err)
	}
}

// TestReplayCacheConcurrent races many goroutines on overlapping IDs; each
// ID must be granted exactly once. Run with -race.
func TestReplayCacheConcurrent(t *testing.T) {
	t.Parallel()
	c := token.NewReplayCache(100_000)
	const ids, workers = 2000, 8
	var granted [ids]atomic.Int32
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < ids; i++ {
				j := (i*7 + w*131) % ids
				now := t0.Add(time.Duration(i) * time.Millisecond)
				switch err := c.Use(fmt.Sprint(j), t0.Add(time.Hour), now); {
				case err == nil:
					granted[j].Add(1)
				case !errors.Is(err, token.ErrReplayed):
					t.Error(err)
				}
				if i%100 == 0 {
					runtime.Gosched()
				}
			}
		}(w)
	}
	wg.Wait()
	for i := range granted {
		if n := granted[i].Load(); n != 1 {
			t.Fatalf("id %d granted %d times", i, n)
		}
	}
}

func BenchmarkReplayCacheUse(b *testing.B) {
	c := token.NewReplayCache(token.DefaultReplayCacheSize)
	ids := make([]string, 1<<16)
	for i := range ids {
		ids[i] = fmt.Sprintf("%022d", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// 1,000 tokens a second, each remembered for 35s: steady state of
		// 35,000 entries with constant expiry and insertion.
		now := t0.Add(time.Duration(i) * time.Millisecond)
		if err := c.Use(ids[i&(1<<16-1)], now.Add(35*time.Second), now); err != nil {
			b.Fatal(err)
		}
	}
}
