package wsbackend

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

func TestReporterSignificant(t *testing.T) {
	t.Parallel()
	defaults := ReporterOptions{}
	capped := ReporterOptions{Capacity: 100}
	fine := ReporterOptions{Threshold: 0.01, MinStep: 1}
	tests := []struct {
		name            string
		opts            ReporterOptions
		published, live int64
		want            bool
	}{
		{"unchanged", defaults, 100, 100, false},
		{"never published", defaults, -1, 0, true},
		{"10% is not more than 10%", defaults, 100, 110, false},
		{"11% up", defaults, 100, 111, true},
		{"11% down", defaults, 100, 89, true},
		{"large relative step below MinStep", defaults, 10, 14, false},
		{"MinStep reached and more than 10%", defaults, 10, 15, true},
		{"small fleet: 1 to 2 is below MinStep", defaults, 1, 2, false},
		{"leaving 0", defaults, 0, 1, true},
		{"reaching 0", defaults, 3, 0, true},
		{"big backend: 5% is not enough", defaults, 10000, 10500, false},
		{"big backend: 11%", defaults, 10000, 11100, true},
		{"reaching capacity", capped, 98, 100, true},
		{"leaving capacity", capped, 100, 99, true},
		{"above capacity both", capped, 101, 103, false},
		{"fine threshold", fine, 100, 102, true},
		{"fine threshold, 1%", fine, 100, 101, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := tt.opts.Significant(tt.published, tt.live); got != tt.want {
				t.Errorf("Significant(%d, %d) = %v, want %v", tt.published, tt.live, got, tt.want)
			}
		})
	}
}

func TestReporterOptionsInvalid(t *testing.T) {
	t.Parallel()
	publish := func(context.Context, int64) error { return nil }
	tests := []struct {
		name string
		c    *Counter
		opts ReporterOptions
	}{
		{"nil counter", nil, ReporterOptions{Publish: publish}},
		{"no Publish", new(Counter), ReporterOptions{}},
		{"negative threshold", new(Counter), ReporterOptions{Publish: publish, Threshold: -1}},
		{"refresh shorter than interval", new(Counter), ReporterOptions{Publish: publish, MinPublishInterval: time.Second, RefreshAfter: time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if _, err := NewReporter(tt.c, tt.opts); err == nil {
				t.Error("NewReporter succeeded")
			}
		})
	}
}

// publishLog records publishes.
type publishLog struct {
	mu    sync.Mutex
	at    []time.Time
	value []int64
	fail  int // fail this many publishes first
}

func (l *publishLog) publish(_ context.Context, n int64) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fail > 0 {
		l.fail--
		return errors.New("agent unreachable")
	}
	l.at = append(l.at, time.Now())
	l.value = append(l.value, n)
	return nil
}

func (l *publishLog) snapshot() ([]time.Time, []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Time(nil), l.at...), append([]int64(nil), l.value...)
}

func startReporter(t *testing.T, ctx context.Context, c *Counter, opts ReporterOptions) (*Reporter, <-chan error) {
	t.Helper()
	r, err := NewReporter(c, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	return r, done
}

// TestReporterRateBound churns the count hard and checks that publishes are
// never closer than MinPublishInterval, yet keep coming.
func TestReporterRateBound(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const interval = 100 * time.Millisecond
	const window = 2 * time.Second

	var c Counter
	var log publishLog
	runCtx, stop := context.WithCancel(ctx)
	_, done := startReporter(t, runCtx, &c, ReporterOptions{Publish: log.publish, MinPublishInterval: interval})

	churnCtx, endChurn := context.WithTimeout(ctx, window)
	defer endChurn()
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for churnCtx.Err() == nil {
				// Swing between about 0 and 400 connections.
				if c.Live() < 200 || rand.IntN(2) == 0 && c.Live() < 400 {
					c.Add(1)
				} else {
					c.Add(-1)
				}
			}
		})
	}
	wg.Wait()
	stop()
	<-done

	at, _ := log.snapshot()
	if max := int(window/interval) + 2; len(at) > max { // +1 for the first publish, +1 for the tail
		t.Errorf("%d publishes in %v with MinPublishInterval %v, want at most %d", len(at), window, interval, max)
	}
	if min := int(window / (interval * 14 / 10) / 2); len(at) < min {
		t.Errorf("only %d publishes in %v under constant churn, want at least %d", len(at), window, min)
	}
	for i := 1; i < len(at); i++ {
		if gap := at[i].Sub(at[i-1]); gap < interval {
			t.Errorf("publishes %d and %d only %v apart, want at least %v", i-1, i, gap, interval)
		}
	}
	t.Logf("%d publishes in %v (MinPublishInterval %v)", len(at), window, interval)
}

// TestReporterWhenToPublish checks latency: significant changes at once,
// small ones only after RefreshAfter, none while the count is steady.
func TestReporterWhenToPublish(t *testing.T) {
	t.Parallel()
	const (
		interval = 50 * time.Millisecond
		refresh  = 400 * time.Millisecond
	)
	// "At once" is bounded by refresh/2 after the change (a publish that
	// waited would take refresh); "waits for the refresh" is bounded below
	// by refresh after the previous publish, which is when it becomes due,
	// whatever the machine's speed. The upper bounds have a 4x margin for a
	// busy machine.
	tests := []struct {
		name      string
		start     int64
		change    int64
		sinceLast time.Duration // at least this after the previous publish
		latest    time.Duration // at most this after the change
	}{
		{"significant change goes out at once", 100, 20, 0, refresh / 2},
		{"leaving zero goes out at once", 0, 1, 0, refresh / 2},
		{"crossing capacity goes out at once", 48, 2, 0, refresh / 2},
		{"small change waits for the refresh", 100, 3, refresh, 4 * refresh},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			var c Counter
			c.Add(tt.start)
			var log publishLog
			r, done := startReporter(t, ctx, &c, ReporterOptions{
				Publish: log.publish, MinPublishInterval: interval, RefreshAfter: refresh, Capacity: 50,
			})
			waitFor(ctx, t, "first publish", func() bool { _, _, ok := r.Published(); return ok })
			// Let the rate limit and the refresh clock of the first publish
			// pass partly, then change.
			time.Sleep(3 * interval)
			changed := time.Now()
			c.Add(tt.change)
			want := tt.start + tt.change
			waitFor(ctx, t, "the change to be published", func() bool { n, _, _ := r.Published(); return n == want })
			at, values := log.snapshot()
			if len(values) != 2 {
				t.Fatalf("published %v, want exactly [%d %d]", values, tt.start, want)
			}
			if lag := at[1].Sub(changed); lag > tt.latest {
				t.Errorf("published %v after the change, want at most %v", lag, tt.latest)
			}
			// The log stamps a publish a moment after the Reporter's own
			// mark, from which the refresh is due: allow that moment.
			if gap := at[1].Sub(at[0]); gap < tt.sinceLast-5*time.Millisecond {
				t.Errorf("published %v after the previous publish, want at least %v", gap, tt.sinceLast)
			}
			// Steady now: no further publishes.
			time.Sleep(refresh + interval)
			if _, values := log.snapshot(); len(values) != 2 {
				t.Errorf("steady count published again: %v", values)
			}
			cancel()
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
			if hs := c.hooks.Load(); hs != nil && len(*hs) != 0 {
				t.Errorf("Run left %d hooks on the Counter", len(*hs))
			}
		})
	}
}

// TestReporterRetries checks that failed publishes are retried with backoff
// and that PublishNow's failure is retried by the loop.
func TestReporterRetries(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var c Counter
	c.Add(7)
	log := publishLog{fail: 3}
	r, done := startReporter(t, ctx, &c, ReporterOptions{Publish: log.publish, MinPublishInterval: 20 * time.Millisecond})
	waitFor(ctx, t, "a publish after 3 failures", func() bool { _, _, ok := r.Published(); return ok })

	log.mu.Lock()
	log.fail = 1
	log.mu.Unlock()
	if err := r.PublishNow(ctx); err == nil {
		t.Fatal("PublishNow succeeded despite the failure")
	}
	waitFor(ctx, t, "the loop to retry PublishNow", func() bool { _, v := log.snapshot(); return len(v) == 2 })
	cancel()
	<-done
}
