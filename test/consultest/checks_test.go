package consultest_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// checkInHealth returns the check as /v1/health shows it (the catalog).
func checkInHealth(ctx context.Context, t *testing.T, c *api.Client, service, checkID string) *api.HealthCheck {
	t.Helper()
	entries, _ := health(ctx, t, c, service, false)
	for _, e := range entries {
		if hc := findCheck(e, checkID); hc != nil {
			return hc
		}
	}
	t.Fatalf("check %s not in health of %s", checkID, service)
	return nil
}

// checkInAgent returns the check as /v1/agent/checks shows it (the agent).
func checkInAgent(t *testing.T, c *api.Client, checkID string) *api.AgentCheck {
	t.Helper()
	checks, err := c.Agent().Checks()
	if err != nil {
		t.Fatalf("listing agent checks: %v", err)
	}
	if checks[checkID] == nil {
		t.Fatalf("check %s not on the agent", checkID)
	}
	return checks[checkID]
}

// Consul docs, TTL checks: a check not updated within its TTL goes critical,
// with output "TTL expired", and drops out of ?passing.
func TestTTLExpiry(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name       string
		lastOutput string
		wantOutput string
	}{
		{"no output", "", "TTL expired"},
		{"with output", "conns=3", "TTL expired (last output before timeout follows): conns=3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			a, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
			const ttl = 300 * time.Millisecond
			register(ctx, t, c, ttlService("web-1", "web", ttl.String(), ""))
			start := time.Now()
			updateTTL(ctx, t, c, "check:web-1", tt.lastOutput, api.HealthPassing)
			entries, meta := health(ctx, t, c, "web", true)
			if len(entries) != 1 {
				t.Fatalf("got %d passing instances after the update, want 1", len(entries))
			}

			// The expiry must wake a blocking watcher.
			done := blockHealth(ctx, c, "web", meta.LastIndex, 8*time.Second)
			waitBlocked(ctx, t, a, "/v1/health/service/web", 2)
			r := <-done
			if r.err != nil {
				t.Fatalf("blocking query: %v", r.err)
			}
			if elapsed := time.Since(start); elapsed < ttl {
				t.Errorf("went critical after %v, before the %v TTL", elapsed, ttl)
			}
			hc := findCheck(r.entries[0], "check:web-1")
			if hc.Status != api.HealthCritical || hc.Output != tt.wantOutput {
				t.Errorf("after the TTL: %s %q, want critical %q", hc.Status, hc.Output, tt.wantOutput)
			}
			if entries, _ := health(ctx, t, c, "web", true); len(entries) != 0 {
				t.Errorf("expired instance still passing")
			}
		})
	}
}

// Each update restarts the TTL; without updates it runs out.
func TestTTLResetByUpdates(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	clock := newFakeClock()
	a, c := startAgent(t, consultest.Options{Now: clock.Now, CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("web-1", "web", "1m", api.HealthPassing))
	for range 5 { // 5 × 40s, well past the TTL
		clock.Advance(a, 40*time.Second)
		if hc := checkInHealth(ctx, t, c, "web", "check:web-1"); hc.Status != api.HealthPassing {
			t.Fatalf("check went %s although updated within its TTL", hc.Status)
		}
		updateTTL(ctx, t, c, "check:web-1", "", api.HealthPassing)
	}
	clock.Advance(a, 59*time.Second)
	if hc := checkInHealth(ctx, t, c, "web", "check:web-1"); hc.Status != api.HealthPassing {
		t.Fatalf("check went %s before its TTL", hc.Status)
	}
	clock.Advance(a, 2*time.Second)
	if hc := checkInHealth(ctx, t, c, "web", "check:web-1"); hc.Status != api.HealthCritical {
		t.Fatalf("check %s after its TTL ran out, want critical", hc.Status)
	}
}

// consul#9113 and Consul's check_update_interval docs: an update that
// changes only the output stays on the agent and reaches the catalog after
// about the interval (Consul waits d/2 plus a random part of d); a status
// change syncs at once (TestCheckUpdateSyncTiming).
func TestOutputOnlyUpdateIsDeferred(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	const interval = 10 * time.Minute
	clock := newFakeClock()
	a, c := startAgent(t, consultest.Options{Now: clock.Now, CheckUpdateInterval: interval})
	register(ctx, t, c, ttlService("web-1", "web", "1h", api.HealthPassing))
	writes := a.ServerWrites()
	_, meta := health(ctx, t, c, "web", false)

	for i := 1; i <= 5; i++ {
		updateTTL(ctx, t, c, "check:web-1", fmt.Sprintf("conns=%d", i), api.HealthPassing)
	}
	if got := checkInAgent(t, c, "check:web-1").Output; got != "conns=5" {
		t.Errorf("agent shows output %q, want the latest at once", got)
	}

	clock.Advance(a, interval/2-time.Second)
	if got := checkInHealth(ctx, t, c, "web", "check:web-1").Output; got != "" {
		t.Errorf("health shows output %q before half the update interval", got)
	}
	if _, m := health(ctx, t, c, "web", false); m.LastIndex != meta.LastIndex {
		t.Errorf("held output moved the index from %d to %d", meta.LastIndex, m.LastIndex)
	}
	if got := a.ServerWrites() - writes; got != 0 {
		t.Errorf("held output-only updates made %d server writes, want 0", got)
	}

	clock.Advance(a, interval)
	if got := checkInHealth(ctx, t, c, "web", "check:web-1").Output; got != "conns=5" {
		t.Errorf("health shows output %q after 1.5 update intervals, want the latest", got)
	}
	if got := a.ServerWrites() - writes; got != 1 {
		t.Errorf("the deferred sync made %d server writes, want 1", got)
	}
}

func TestCheckUpdateSyncTiming(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name           string
		interval       time.Duration
		status, output string
		wantWrites     int64
	}{
		{"output only, interval 0s", -1, api.HealthPassing, "conns=7", 1},
		{"status change, default interval", 0, api.HealthWarning, "full", 1},
		{"status change, interval 0s", -1, api.HealthCritical, "down", 1},
		{"nothing changes", 0, api.HealthPassing, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			a, c := startAgent(t, consultest.Options{CheckUpdateInterval: tt.interval})
			register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
			writes := a.ServerWrites()

			updateTTL(ctx, t, c, "check:web-1", tt.output, tt.status)

			hc := checkInHealth(ctx, t, c, "web", "check:web-1")
			if hc.Status != tt.status || hc.Output != tt.output {
				t.Errorf("health shows %s %q at once, want %s %q", hc.Status, hc.Output, tt.status, tt.output)
			}
			if got := a.ServerWrites() - writes; got != tt.wantWrites {
				t.Errorf("made %d server writes, want %d", got, tt.wantWrites)
			}
		})
	}
}

// The older pass/warn/fail endpoints set the status with ?note as output.
func TestCheckPassWarnFail(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("web-1", "web", "10s", ""))
	for _, step := range []struct {
		do     func(string, string) error
		status string
	}{
		{c.Agent().PassTTL, api.HealthPassing},
		{c.Agent().WarnTTL, api.HealthWarning},
		{c.Agent().FailTTL, api.HealthCritical},
	} {
		if err := step.do("check:web-1", "note "+step.status); err != nil {
			t.Fatalf("setting %s: %v", step.status, err)
		}
		hc := checkInHealth(ctx, t, c, "web", "check:web-1")
		if hc.Status != step.status || hc.Output != "note "+step.status {
			t.Errorf("got %s %q, want %s with the note as output", hc.Status, hc.Output, step.status)
		}
	}
}

// Output is capped at check_output_max_size, 4096 bytes by default.
func TestCheckOutputTruncated(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("web-1", "web", "10s", ""))
	updateTTL(ctx, t, c, "check:web-1", strings.Repeat("x", 5000), api.HealthPassing)
	want := strings.Repeat("x", 4096) + " ... (captured 4096 of 5000 bytes)"
	if got := checkInHealth(ctx, t, c, "web", "check:web-1").Output; got != want {
		t.Errorf("output of %d bytes, want %d bytes ending %q", len(got), len(want), want[4090:])
	}
}

func TestCheckUpdateErrors(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, ttlService("web-1", "web", "10s", ""))
	if err := c.Agent().EnableServiceMaintenance("web-1", ""); err != nil {
		t.Fatalf("enabling maintenance: %v", err)
	}

	err := c.Agent().UpdateTTL("nosuch", "", api.HealthPassing)
	if code, body := statusError(t, err); code != http.StatusNotFound || !strings.Contains(body, `Unknown check ID "nosuch"`) {
		t.Errorf("unknown check: got %d %q", code, body)
	}
	err = c.Agent().UpdateTTL("_service_maintenance:web-1", "", api.HealthPassing)
	if code, body := statusError(t, err); code != http.StatusInternalServerError || !strings.Contains(body, "does not have associated TTL") {
		t.Errorf("non-TTL check: got %d %q", code, body)
	}
	url := "http://" + a.Addr() + "/v1/agent/check/update/check:web-1"
	resp, body := rawRequest(ctx, t, "PUT", url, nil, `{"Status":"unknown"}`)
	if resp.StatusCode != http.StatusBadRequest || body != "Invalid check status: 'unknown'" {
		t.Errorf("bad status: got %d %q", resp.StatusCode, body)
	}
}

// With an injected clock the agent's own timer loop notices the clock move,
// without Tick.
func TestInjectedClockWithoutTick(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	clock := newFakeClock()
	_, c := startAgent(t, consultest.Options{Now: clock.Now, CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("web-1", "web", "1h", api.HealthPassing))
	if hc := checkInHealth(ctx, t, c, "web", "check:web-1"); hc.Status != api.HealthPassing {
		t.Fatalf("check %s before the clock moved", hc.Status)
	}
	clock.mu.Lock()
	clock.now = clock.now.Add(2 * time.Hour)
	clock.mu.Unlock()
	eventually(ctx, t, "the TTL expires on the injected clock", func() bool {
		return checkInHealth(ctx, t, c, "web", "check:web-1").Status == api.HealthCritical
	})
}
