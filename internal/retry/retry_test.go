package retry

import (
	"errors"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestDelay(t *testing.T) {
	t.Parallel()
	base, maxDelay := 500*time.Millisecond, 10*time.Second
	for n, want := range map[int]time.Duration{1: 500 * time.Millisecond, 2: time.Second, 3: 2 * time.Second,
		4: 4 * time.Second, 5: 8 * time.Second, 6: 10 * time.Second, 7: 10 * time.Second, 30: 10 * time.Second} {
		seen := make(map[time.Duration]bool)
		for range 200 {
			d := Delay(base, maxDelay, n)
			if d < want/2 || d > want {
				t.Fatalf("Delay after %d failures = %s, want in [%s, %s]", n, d, want/2, want)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Errorf("Delay after %d failures took only %d distinct values in 200 draws: no jitter?", n, len(seen))
		}
	}
	if d := Delay(time.Nanosecond, time.Nanosecond, 1); d != time.Nanosecond {
		t.Errorf("Delay of 1ns = %s", d)
	}
}

func TestBackoffResets(t *testing.T) {
	t.Parallel()
	b := Backoff{Base: time.Second, Max: time.Minute}
	for range 5 {
		b.Next()
	}
	if d := b.Next(); d < 16*time.Second {
		t.Fatalf("sixth delay %s, want at least 16s", d)
	}
	b.Reset()
	if d := b.Next(); d > time.Second {
		t.Fatalf("first delay after Reset %s, want at most 1s", d)
	}
}

// A run of failures is two lines at info and above, whatever its length;
// the next run is two more.
func TestOutageLogsARunOnce(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.DebugLevel)
	clock := time.Unix(0, 0)
	o := Outage{Logger: zap.New(core), Failed: "query failed", Recovered: "query works again", Level: zapcore.ErrorLevel,
		Now: func() time.Time { return clock }}
	o.OK() // nothing to end
	for range 5 {
		o.Fail(errors.New("refused"), zap.String("consul", "x"))
		clock = clock.Add(time.Second)
	}
	if o.Failures() != 5 {
		t.Errorf("Failures = %d, want 5", o.Failures())
	}
	o.OK()
	o.Fail(errors.New("again"))
	if n := logs.FilterLevelExact(zapcore.ErrorLevel).Len(); n != 2 {
		t.Errorf("%d error lines for two runs, want 2", n)
	}
	if n := logs.FilterLevelExact(zapcore.DebugLevel).Len(); n != 4 {
		t.Errorf("%d debug lines, want 4", n)
	}
	rec := logs.FilterMessage("query works again").All()
	if len(rec) != 1 || rec[0].ContextMap()["failures"] != int64(5) || rec[0].ContextMap()["after"] != 5*time.Second {
		t.Errorf("recovery logged as %v", rec)
	}
	first := logs.FilterMessage("query failed").All()[0].ContextMap()
	if first["consul"] != "x" || first["error"] != "refused" {
		t.Errorf("first failure logged with %v", first)
	}
}
