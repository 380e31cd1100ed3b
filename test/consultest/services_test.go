package consultest_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// Consul docs, service meta: at most 64 pairs, keys up to 128 characters of
// letters, digits, _ and -, not starting with "consul-", values up to 512.
func TestServiceMetaValidation(t *testing.T) {
	t.Parallel()
	many := func(n int) map[string]string {
		m := make(map[string]string, n)
		for i := range n {
			m[fmt.Sprintf("k%d", i)] = "v"
		}
		return m
	}
	tests := []struct {
		name    string
		meta    map[string]string
		wantErr string // empty: accepted
	}{
		{"64 pairs", many(64), ""},
		{"65 pairs", many(65), "cannot contain more than 64 key/value pairs"},
		{"128-char key", map[string]string{strings.Repeat("k", 128): "v"}, ""},
		{"129-char key", map[string]string{strings.Repeat("k", 129): "v"}, "Key is too long (limit: 128 characters)"},
		{"512-char value", map[string]string{"k": strings.Repeat("v", 512)}, ""},
		{"513-char value", map[string]string{"k": strings.Repeat("v", 513)}, "Value is too long (limit: 512 characters)"},
		{"reserved prefix", map[string]string{"consul-version": "1"}, "Key prefix 'consul-' is reserved for internal use"},
		{"dot in key", map[string]string{"ws.conns": "1"}, "Key contains invalid characters"},
		{"blank key", map[string]string{"": "1"}, "Key cannot be blank"},
		{"usual keys", map[string]string{"ws_conns": "12", "zone-a": "x", "Capacity": ""}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			a, c := startAgent(t, consultest.Options{})
			reg := &api.AgentServiceRegistration{ID: "web-1", Name: "web", Meta: tt.meta}
			err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("registering: %v", err)
				}
				entries, _ := health(ctx, t, c, "web", false)
				if len(entries) != 1 || len(entries[0].Service.Meta) != len(tt.meta) {
					t.Errorf("meta not stored: %+v", entries)
				}
				return
			}
			code, body := statusError(t, err)
			if code != http.StatusBadRequest || !strings.HasPrefix(body, "Invalid Service Meta: ") || !strings.Contains(body, tt.wantErr) {
				t.Errorf("got %d %q, want 400 Invalid Service Meta ... %q", code, body, tt.wantErr)
			}
			if a.ServerWrites() != 0 {
				t.Errorf("a refused registration made %d server writes", a.ServerWrites())
			}
		})
	}
}

func TestServiceRegistrationErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		reg     *api.AgentServiceRegistration
		wantErr string
	}{
		{"no name", &api.AgentServiceRegistration{ID: "x"}, "Missing service name"},
		{"any address", &api.AgentServiceRegistration{Name: "web", Address: "0.0.0.0"}, "Invalid service address"},
		{"bad weights", &api.AgentServiceRegistration{Name: "web", Weights: &api.AgentWeights{Passing: 0}}, "Invalid Weights"},
		{"check without TTL", &api.AgentServiceRegistration{Name: "web", Check: &api.AgentServiceCheck{Name: "x"}},
			"TTL must be > 0 for TTL checks"},
		{"bad TTL", &api.AgentServiceRegistration{Name: "web", Check: &api.AgentServiceCheck{TTL: "soon"}}, "Request decode failed"},
		{"bad check status", &api.AgentServiceRegistration{Name: "web", Check: &api.AgentServiceCheck{TTL: "1s", Status: "ok"}},
			"Status for checks must 'passing', 'warning', 'critical'"},
		{"HTTP check", &api.AgentServiceRegistration{Name: "web", Check: &api.AgentServiceCheck{HTTP: "http://x", Interval: "1s"}},
			"TTL checks only"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			_, c := startAgent(t, consultest.Options{})
			err := c.Agent().ServiceRegisterOpts(tt.reg, api.ServiceRegisterOpts{}.WithContext(ctx))
			if code, body := statusError(t, err); code != http.StatusBadRequest || !strings.Contains(body, tt.wantErr) {
				t.Errorf("got %d %q, want 400 containing %q", code, body, tt.wantErr)
			}
		})
	}
}

// Consul docs, service registration: ID defaults to the name, TTL checks
// start critical unless Status says otherwise, and checks get Consul's IDs
// and names.
func TestServiceRegistrationDefaults(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, &api.AgentServiceRegistration{
		Name: "web",
		Checks: api.AgentServiceChecks{
			{TTL: "10s"},
			{TTL: "10s", Status: api.HealthPassing},
		},
	})
	entries, _ := health(ctx, t, c, "web", false)
	if len(entries) != 1 || entries[0].Service.ID != "web" {
		t.Fatalf("got %+v, want one instance with ID web", entries)
	}
	for id, want := range map[string]string{"service:web:1": api.HealthCritical, "service:web:2": api.HealthPassing} {
		hc := findCheck(entries[0], id)
		if hc == nil {
			t.Errorf("no check %s", id)
			continue
		}
		if hc.Status != want || hc.Name != "Service 'web' check" || hc.Type != "ttl" {
			t.Errorf("%s: %s %q type %q, want %s \"Service 'web' check\" ttl", id, hc.Status, hc.Name, hc.Type, want)
		}
	}
	if w := entries[0].Service.Weights; w.Passing != 1 || w.Warning != 1 {
		t.Errorf("weights %+v, want Consul's default 1/1", w)
	}
}

// Re-registering (say, to change meta) keeps the checks' status and output,
// so health does not flap; ?replace-existing-checks drops omitted checks.
func TestReregistration(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	reg := ttlService("web-1", "web", "10s", "")
	reg.Checks = api.AgentServiceChecks{{CheckID: "extra", TTL: "10s", Status: api.HealthPassing}}
	register(ctx, t, c, reg)
	updateTTL(ctx, t, c, "check:web-1", "conns=4", api.HealthPassing)

	writes := a.ServerWrites()
	reg.Meta = map[string]string{"conns": "4"}
	register(ctx, t, c, reg)
	entries, _ := health(ctx, t, c, "web", true)
	if len(entries) != 1 || entries[0].Service.Meta["conns"] != "4" {
		t.Fatalf("after re-registering: %+v, want one passing instance with the new meta", entries)
	}
	if hc := findCheck(entries[0], "check:web-1"); hc.Output != "conns=4" {
		t.Errorf("output %q lost by re-registering", hc.Output)
	}
	if got := a.ServerWrites() - writes; got != 1 {
		t.Errorf("meta change made %d server writes, want 1", got)
	}

	reg.Checks = nil
	if err := c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{ReplaceExistingChecks: true}.WithContext(ctx)); err != nil {
		t.Fatalf("re-registering with replace-existing-checks: %v", err)
	}
	entries, _ = health(ctx, t, c, "web", false)
	if findCheck(entries[0], "extra") != nil {
		t.Errorf("replace-existing-checks kept the omitted check")
	}
}

func TestServiceDeregistration(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))
	if err := c.Agent().ServiceDeregister("web-1"); err != nil {
		t.Fatalf("deregistering: %v", err)
	}
	if entries, _ := health(ctx, t, c, "web", false); len(entries) != 0 {
		t.Errorf("deregistered service still in health: %+v", entries)
	}
	if checks, _ := c.Agent().Checks(); len(checks) != 0 {
		t.Errorf("its checks are still on the agent: %v", checks)
	}
	err := c.Agent().ServiceDeregister("web") // a name, not an ID
	if code, body := statusError(t, err); code != http.StatusNotFound || !strings.Contains(body, `Unknown service ID "web"`) {
		t.Errorf("unknown service: got %d %q", code, body)
	}
}

// Consul docs, service maintenance: enabling adds a critical check
// _service_maintenance:<id> carrying the reason, which takes the instance
// out of ?passing; disabling removes it.
func TestServiceMaintenance(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, ttlService("web-1", "web", "10s", api.HealthPassing))

	writes := a.ServerWrites()
	for range 2 { // the second call is a no-op
		if err := c.Agent().EnableServiceMaintenance("web-1", "draining"); err != nil {
			t.Fatalf("enabling maintenance: %v", err)
		}
	}
	entries, _ := health(ctx, t, c, "web", false)
	hc := findCheck(entries[0], api.ServiceMaintPrefix+"web-1")
	if hc == nil || hc.Status != api.HealthCritical || hc.Notes != "draining" {
		t.Fatalf("maintenance check %+v, want critical with the reason as notes", hc)
	}
	if got := entries[0].Checks.AggregatedStatus(); got != api.HealthMaint {
		t.Errorf("aggregated status %q, want maintenance", got)
	}
	if passing, _ := health(ctx, t, c, "web", true); len(passing) != 0 {
		t.Errorf("instance in maintenance still passing")
	}

	if err := c.Agent().DisableServiceMaintenance("web-1"); err != nil {
		t.Fatalf("disabling maintenance: %v", err)
	}
	if passing, _ := health(ctx, t, c, "web", true); len(passing) != 1 {
		t.Errorf("instance not passing after maintenance")
	}
	if got := a.ServerWrites() - writes; got != 2 {
		t.Errorf("maintenance on and off made %d server writes, want 2", got)
	}

	err := c.Agent().EnableServiceMaintenance("nosuch", "")
	if code, _ := statusError(t, err); code != http.StatusNotFound {
		t.Errorf("unknown service: got %d, want 404", code)
	}
}

// Consul docs, deregister_critical_service_after: a service whose check has
// been critical for longer than that is deregistered by the reaper; the
// timeout has a floor (1m in Consul) and counts from the check going
// critical, not from a registration that starts critical.
func TestDeregisterCriticalServiceAfter(t *testing.T) {
	t.Parallel()
	// Every case registers a TTL check of 1m at time 0, lets it expire at 61s
	// and reaps within the 1s reap interval once the effective timeout has
	// passed.
	tests := []struct {
		name       string
		status     string        // initial status
		deregAfter string        // as registered
		minDereg   time.Duration // Options.MinDeregisterCriticalAfter
		effective  time.Duration // the timeout Consul applies
	}{
		{"passing, then the TTL expires", api.HealthPassing, "30s", time.Millisecond, 30 * time.Second},
		// Critical from the start, but the clock starts when the TTL expires:
		// at 59s, 30s past registration, the service must still be there.
		{"registered critical", "", "30s", time.Millisecond, 30 * time.Second},
		{"the floor applies", api.HealthPassing, "10s", 2 * time.Minute, 2 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			clock := newFakeClock()
			a, c := startAgent(t, consultest.Options{
				Now:                        clock.Now,
				ReapInterval:               time.Second,
				MinDeregisterCriticalAfter: tt.minDereg,
				CheckUpdateInterval:        -1,
			})
			reg := ttlService("web-1", "web", "1m", tt.status)
			reg.Check.DeregisterCriticalServiceAfter = tt.deregAfter
			register(ctx, t, c, reg)
			present := func() bool {
				entries, _ := health(ctx, t, c, "web", false)
				return len(entries) == 1
			}

			clock.Advance(a, 59*time.Second)
			if !present() {
				t.Fatal("reaped before the TTL expired")
			}
			clock.Advance(a, 2*time.Second) // the TTL expires: critical from now on
			if hc := checkInHealth(ctx, t, c, "web", "check:web-1"); hc.Status != api.HealthCritical {
				t.Fatalf("check %s after its TTL, want critical", hc.Status)
			}
			clock.Advance(a, tt.effective-5*time.Second)
			if !present() {
				t.Fatalf("reaped after %v critical, before %v", tt.effective-5*time.Second, tt.effective)
			}
			clock.Advance(a, 10*time.Second)
			if present() {
				t.Fatalf("not reaped after %v critical", tt.effective+5*time.Second)
			}
			if services, _ := c.Agent().Services(); len(services) != 0 {
				t.Errorf("reaped service still on the agent: %v", services)
			}
		})
	}
}

// The reaper also runs on its own, in real time.
func TestReaperRunsByItself(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{
		ReapInterval:               20 * time.Millisecond,
		MinDeregisterCriticalAfter: time.Millisecond,
	})
	reg := ttlService("web-1", "web", "100ms", api.HealthPassing)
	reg.Check.DeregisterCriticalServiceAfter = "100ms"
	register(ctx, t, c, reg)
	eventually(ctx, t, "the service is reaped", func() bool {
		entries, _ := health(ctx, t, c, "web", false)
		return len(entries) == 0
	})
}
