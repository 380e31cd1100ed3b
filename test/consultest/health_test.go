package consultest_test

import (
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

func serviceIDs(entries []*api.ServiceEntry) []string {
	ids := make([]string, 0, len(entries))
	for _, e := range entries {
		ids = append(ids, e.Service.ID)
	}
	slices.Sort(ids)
	return ids
}

// Consul docs, health endpoint: ?passing keeps only instances whose checks,
// the node's included, all pass; warning is not passing.
func TestHealthPassingFilter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{CheckUpdateInterval: -1})
	register(ctx, t, c, ttlService("passing", "web", "10s", api.HealthPassing))
	register(ctx, t, c, ttlService("warning", "web", "10s", api.HealthWarning))
	register(ctx, t, c, ttlService("critical", "web", "10s", api.HealthCritical))
	register(ctx, t, c, ttlService("default", "web", "10s", "")) // TTL checks start critical
	register(ctx, t, c, ttlService("maint", "web", "10s", api.HealthPassing))
	register(ctx, t, c, &api.AgentServiceRegistration{ID: "nocheck", Name: "web"})
	if err := c.Agent().EnableServiceMaintenance("maint", "upgrade"); err != nil {
		t.Fatalf("enabling maintenance: %v", err)
	}

	tests := []struct {
		passing bool
		want    []string
	}{
		{passing: false, want: []string{"critical", "default", "maint", "nocheck", "passing", "warning"}},
		{passing: true, want: []string{"nocheck", "passing"}},
	}
	for _, tt := range tests {
		entries, _ := health(ctx, t, c, "web", tt.passing)
		if got := serviceIDs(entries); !slices.Equal(got, tt.want) {
			t.Errorf("passing=%v: got %v, want %v", tt.passing, got, tt.want)
		}
		for _, e := range entries {
			if len(e.Checks) == 0 || e.Checks[0].CheckID != "serfHealth" || e.Checks[0].Status != api.HealthPassing {
				t.Errorf("%s: checks %v, want the node's passing serfHealth first", e.Service.ID, e.Checks)
			}
			if e.Node == nil || e.Node.Node != "testnode" || e.Node.Address == "" {
				t.Errorf("%s: node %+v, want the agent's node", e.Service.ID, e.Node)
			}
		}
	}
}

// Consul docs, health endpoint: ?tag filters by tag, more than once means
// all of them; Consul compares tags case-insensitively.
func TestHealthTagFilter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{})
	for id, tags := range map[string][]string{
		"a": {"primary", "v1"},
		"b": {"secondary", "v1"},
		"c": {"V1"},
	} {
		register(ctx, t, c, &api.AgentServiceRegistration{ID: id, Name: "web", Tags: tags})
	}
	tests := []struct {
		tags []string
		want []string
	}{
		{nil, []string{"a", "b", "c"}},
		{[]string{"v1"}, []string{"a", "b", "c"}},
		{[]string{"primary"}, []string{"a"}},
		{[]string{"primary", "v1"}, []string{"a"}},
		{[]string{"primary", "secondary"}, []string{}},
		{[]string{"none"}, []string{}},
	}
	for _, tt := range tests {
		q := (&api.QueryOptions{}).WithContext(ctx)
		entries, _, err := c.Health().ServiceMultipleTags("web", tt.tags, false, q)
		if err != nil {
			t.Fatalf("tags %v: %v", tt.tags, err)
		}
		if got := serviceIDs(entries); !slices.Equal(got, tt.want) {
			t.Errorf("tags %v: got %v, want %v", tt.tags, got, tt.want)
		}
		catalog, _, err := c.Catalog().ServiceMultipleTags("web", tt.tags, q)
		if err != nil {
			t.Fatalf("catalog, tags %v: %v", tt.tags, err)
		}
		if len(catalog) != len(tt.want) {
			t.Errorf("catalog, tags %v: got %d instances, want %d", tt.tags, len(catalog), len(tt.want))
		}
	}
}

func TestHealthDatacenter(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	_, c := startAgent(t, consultest.Options{Datacenter: "east"})
	register(ctx, t, c, &api.AgentServiceRegistration{ID: "web-1", Name: "web"})

	q := (&api.QueryOptions{Datacenter: "east"}).WithContext(ctx)
	if entries, _, err := c.Health().Service("web", "", false, q); err != nil || len(entries) != 1 {
		t.Fatalf("own datacenter: %d entries, err %v", len(entries), err)
	}
	q = (&api.QueryOptions{Datacenter: "west"}).WithContext(ctx)
	_, _, err := c.Health().Service("web", "", false, q)
	if code, body := statusError(t, err); code != http.StatusInternalServerError || body != "No path to datacenter" {
		t.Errorf("other datacenter: got %d %q, want 500 No path to datacenter", code, body)
	}
}

// The catalog lists services with their tags, the agent's own "consul"
// service included, and answers blocking queries like /v1/health.
func TestCatalogServices(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, c := startAgent(t, consultest.Options{})
	register(ctx, t, c, &api.AgentServiceRegistration{ID: "web-1", Name: "web", Tags: []string{"b", "a"}})
	register(ctx, t, c, &api.AgentServiceRegistration{ID: "web-2", Name: "web", Tags: []string{"a", "c"}})

	q := (&api.QueryOptions{}).WithContext(ctx)
	services, meta, err := c.Catalog().Services(q)
	if err != nil {
		t.Fatalf("listing services: %v", err)
	}
	if got := services["web"]; !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("web tags %v, want [a b c]", got)
	}
	if _, ok := services["consul"]; !ok {
		t.Errorf("services %v lack the agent's own consul service", services)
	}

	done := make(chan uint64, 1)
	go func() {
		q := (&api.QueryOptions{WaitIndex: meta.LastIndex, WaitTime: 5 * time.Second}).WithContext(ctx)
		_, m, err := c.Catalog().Services(q)
		if err != nil {
			done <- 0
			return
		}
		done <- m.LastIndex
	}()
	waitBlocked(ctx, t, a, "/v1/catalog/services", 2)
	register(ctx, t, c, &api.AgentServiceRegistration{ID: "api-1", Name: "api"})
	if got := <-done; got <= meta.LastIndex {
		t.Errorf("catalog watcher woke with index %d, want more than %d", got, meta.LastIndex)
	}
}

func TestUnknownEndpoint(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, _ := startAgent(t, consultest.Options{})
	resp, body := rawRequest(ctx, t, "GET", "http://"+a.Addr()+"/v1/kv/some/key", nil, "")
	if resp.StatusCode != http.StatusNotFound || !strings.Contains(body, "not a recognized HTTP API endpoint") {
		t.Errorf("got %d %q, want 404 with Consul's text", resp.StatusCode, body)
	}
	resp, _ = rawRequest(ctx, t, "POST", "http://"+a.Addr()+"/v1/health/service/web", nil, "")
	if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") == "" {
		t.Errorf("POST: got %d with Allow %q, want 405 with Allow", resp.StatusCode, resp.Header.Get("Allow"))
	}
}
