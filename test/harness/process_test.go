package harness

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB for testing the harness itself: it keeps what
// the harness reports (Errorf, Fatalf, Skipf) instead of acting on it, and
// runs the cleanups the harness registers when told to. Everything else
// goes to the real test.
type recorder struct {
	testing.TB
	mu       sync.Mutex
	errors   []string
	fatals   []string
	skips    []string
	cleanups []func()
}

func (r *recorder) Errorf(format string, args ...any) { r.record(&r.errors, format, args...) }
func (r *recorder) Fatalf(format string, args ...any) { r.record(&r.fatals, format, args...) }
func (r *recorder) Skipf(format string, args ...any)  { r.record(&r.skips, format, args...) }
func (r *recorder) Cleanup(f func())                  { r.cleanups = append(r.cleanups, f) }

func (r *recorder) record(to *[]string, format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	*to = append(*to, fmt.Sprintf(format, args...))
}

// cleanup runs the registered cleanups, last first, as the testing
// package would at the end of the test.
func (r *recorder) cleanup() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
	r.cleanups = nil
}

// misbehave is testdata/misbehave, built with the race detector when the
// tests run with it (as Caddy is).
var misbehave binary

// Each child that goes wrong fails the test that started it, with the
// evidence; a child that ends well or that the test stopped does not. The
// child is testdata/misbehave, started through StartProcess as Caddy and
// the echo backends are.
func TestHarnessReportsMisbehavingChildren(t *testing.T) {
	bin := misbehave.build(t, "./test/harness/testdata/misbehave", raceEnabled)
	for _, tc := range []struct {
		name string
		do   string
		// running: the child misbehaves, then listens and runs until the
		// harness kills it at the end of the test. Otherwise the test
		// waits for it to exit first.
		running bool
		// stop: the test sends it SIGTERM itself.
		stop bool
		// race: only a -race build reports it.
		race bool
		want []string // in the one report; none: no report
	}{
		{name: "data race in a child still running", do: "race", running: true, race: true,
			want: []string{`"WARNING: DATA RACE"`, "main.race.func1", "Previous write"}},
		{name: "panic", do: "panic",
			want: []string{`"panic:"`, "misbehave: panicking as asked", "exited with status 2"}},
		{name: "fatal runtime error", do: "fatal",
			want: []string{`"fatal error:"`, "stack overflow", "exited with status 2"}},
		{name: "non-zero exit with nothing printed", do: "exit",
			want: []string{"exited with status 3 before anything told it to stop"}},
		{name: "death by a signal no one sent", do: "signal",
			want: []string{"died of signal 9 (killed), which neither the harness nor the test sent"}},
		{name: "well-behaved child killed at the end of the test", do: "nothing", running: true},
		{name: "well-behaved child stopped by the test", do: "nothing", running: true, stop: true},
		{name: "child that exits with status 0", do: "done"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.race && !raceEnabled {
				t.Log("the tests run without -race, so misbehave has no race detector: nothing to check")
				return
			}
			rec := &recorder{TB: t}
			addr := ""
			if tc.running {
				addr = net.JoinHostPort("127.0.0.1", fmt.Sprint(FreePort(t)))
			}
			p := StartProcess(rec, addr, bin, "-do", tc.do, "-listen", addr)
			if len(rec.fatals) > 0 {
				t.Fatalf("StartProcess failed: %v", rec.fatals)
			}
			if tc.stop {
				p.Stop()
			}
			if !tc.running {
				select {
				case <-p.Done():
				case <-time.After(30 * time.Second):
					t.Fatalf("misbehave -do %s still runs after 30s:\n%s", tc.do, p.Output())
				}
			}
			rec.cleanup()

			switch {
			case len(tc.want) == 0 && len(rec.errors) != 0:
				t.Fatalf("reported %d problem(s), want none:\n%s", len(rec.errors), strings.Join(rec.errors, "\n---\n"))
			case len(tc.want) == 0:
				return
			case len(rec.errors) != 1:
				t.Fatalf("reported %d problems, want 1:\n%s", len(rec.errors), strings.Join(rec.errors, "\n---\n"))
			}
			for _, w := range tc.want {
				if !strings.Contains(rec.errors[0], w) {
					t.Errorf("report lacks %q:\n%s", w, rec.errors[0])
				}
			}
			t.Logf("the harness reported:\n%s", rec.errors[0])
		})
	}
}

// A log line that only quotes a runtime message is not the runtime
// speaking: Caddy logs JSON, and net/http logs a recovered handler panic as
// "http: panic serving ...".
func TestHarnessIgnoresQuotedRuntimeMessages(t *testing.T) {
	for _, out := range []string{
		`{"level":"error","msg":"handler failed","error":"panic: boom"}`,
		"2024/01/02 03:04:05 http: panic serving 127.0.0.1:1234: boom",
		`{"msg":"WARNING: DATA RACE is what a race build prints"}`,
	} {
		if troubleRe.MatchString(out) {
			t.Errorf("taken for a runtime report: %s", out)
		}
	}
	for _, out := range []string{
		"some log\nWARNING: DATA RACE\nRead at 0x00c000012345 by goroutine 7:",
		"panic: runtime error: index out of range [3] with length 3",
		"log line\nfatal error: concurrent map writes",
	} {
		if !troubleRe.MatchString(out) {
			t.Errorf("not taken for a runtime report: %s", out)
		}
	}
}

// Under CI a missing dependency fails the test; elsewhere it skips it; a
// dependency that is there does neither.
func TestHarnessRequireFailsUnderCI(t *testing.T) {
	for _, tc := range []struct {
		ci         string
		ok         bool
		fail, skip bool
	}{
		{ci: "true", ok: false, fail: true},
		{ci: "1", ok: false, fail: true},
		{ci: "", ok: false, skip: true},
		{ci: "false", ok: false, skip: true},
		{ci: "true", ok: true},
		{ci: "", ok: true},
	} {
		t.Run(fmt.Sprintf("CI=%q ok=%v", tc.ci, tc.ok), func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			rec := &recorder{TB: t}
			Require(rec, "a widget (apt-get install widget)", tc.ok)
			if got := len(rec.fatals) > 0; got != tc.fail {
				t.Errorf("failed: %v, want %v (%v)", got, tc.fail, rec.fatals)
			}
			if got := len(rec.skips) > 0; got != tc.skip {
				t.Errorf("skipped: %v, want %v (%v)", got, tc.skip, rec.skips)
			}
			for _, m := range append(rec.fatals, rec.skips...) {
				if !strings.Contains(m, "a widget (apt-get install widget)") {
					t.Errorf("message does not say what is missing: %s", m)
				}
			}
		})
	}
}

// $WSB_CHROMIUM, when set, is the only Chromium the harness will use: one
// that is not there fails under CI rather than falling back to another.
func TestHarnessChromiumHonoursWSBChromium(t *testing.T) {
	t.Setenv("WSB_CHROMIUM", "/nonexistent/chromium")
	t.Setenv("CI", "true")
	rec := &recorder{TB: t}
	if got := Chromium(rec); got != "" {
		t.Errorf("Chromium = %q, want none", got)
	}
	if len(rec.fatals) != 1 || !strings.Contains(rec.fatals[0], "/nonexistent/chromium") {
		t.Errorf("want one failure naming $WSB_CHROMIUM, got %v", rec.fatals)
	}
}
