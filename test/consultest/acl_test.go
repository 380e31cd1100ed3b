package consultest_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

const aclToken = "s3cr3t-management-token"

// Consul's ACL behaviour with default policy deny: an unknown token is
// refused everywhere with 403 "ACL not found"; no token means the anonymous
// token, whose writes get 403 "Permission denied" and whose list reads come
// back filtered (200, empty, X-Consul-Results-Filtered-By-ACLs); the right
// token may do everything. /v1/status/leader needs no token at all.
func TestACL(t *testing.T) {
	t.Parallel()
	type call func(ctx context.Context, c *api.Client) (filtered bool, n int, err error)
	write := func(ctx context.Context, c *api.Client) (bool, int, error) {
		reg := &api.AgentServiceRegistration{ID: "api-1", Name: "api"}
		return false, 0, c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx))
	}
	checkUpdate := func(ctx context.Context, c *api.Client) (bool, int, error) {
		return false, 0, c.Agent().UpdateTTLOpts("check:web-1", "", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
	}
	read := func(ctx context.Context, c *api.Client) (bool, int, error) {
		entries, meta, err := c.Health().Service("web", "", false, (&api.QueryOptions{}).WithContext(ctx))
		if err != nil {
			return false, 0, err
		}
		return meta.ResultsFilteredByACLs, len(entries), nil
	}
	agentServices := func(ctx context.Context, c *api.Client) (bool, int, error) {
		services, err := c.Agent().ServicesWithFilterOpts("", (&api.QueryOptions{}).WithContext(ctx))
		return false, len(services), err
	}
	self := func(ctx context.Context, c *api.Client) (bool, int, error) {
		_, err := c.Agent().Self()
		return false, 0, err
	}
	leader := func(ctx context.Context, c *api.Client) (bool, int, error) {
		_, err := c.Status().LeaderWithQueryOptions((&api.QueryOptions{}).WithContext(ctx))
		return false, 0, err
	}

	tests := []struct {
		name         string
		token        string
		call         call
		wantCode     int    // 0: success
		wantBody     string // part of the error body
		wantN        int    // results on success
		wantFiltered bool
	}{
		{"write, right token", aclToken, write, 0, "", 0, false},
		{"write, wrong token", "nope", write, 403, "ACL not found", 0, false},
		{"write, no token", "", write, 403, "Permission denied: anonymous token lacks permission 'service:write' on \"api\"", 0, false},
		{"check update, no token", "", checkUpdate, 403, "Permission denied", 0, false},
		{"check update, wrong token", "nope", checkUpdate, 403, "ACL not found", 0, false},
		{"read, right token", aclToken, read, 0, "", 1, false},
		{"read, wrong token", "nope", read, 403, "ACL not found", 0, false},
		{"read, no token", "", read, 0, "", 0, true},
		{"agent services, no token", "", agentServices, 0, "", 0, false},
		{"agent services, right token", aclToken, agentServices, 0, "", 1, false},
		{"agent self, no token", "", self, 403, "lacks permission 'agent:read'", 0, false},
		{"agent self, wrong token", "nope", self, 403, "ACL not found", 0, false},
		{"agent self, right token", aclToken, self, 0, "", 0, false},
		{"leader, no token", "", leader, 0, "", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := testContext(t)
			a, admin := startAgent(t, consultest.Options{ACLToken: aclToken})
			register(ctx, t, admin, ttlService("web-1", "web", "10s", api.HealthPassing))

			filtered, n, err := tt.call(ctx, newClient(t, a.Addr(), tt.token))
			if tt.wantCode != 0 {
				code, body := statusError(t, err)
				if code != tt.wantCode || !strings.Contains(body, tt.wantBody) {
					t.Errorf("got %d %q, want %d containing %q", code, body, tt.wantCode, tt.wantBody)
				}
				return
			}
			if err != nil {
				t.Fatalf("got %v, want success", err)
			}
			if n != tt.wantN || filtered != tt.wantFiltered {
				t.Errorf("got %d results (filtered %v), want %d (filtered %v)", n, filtered, tt.wantN, tt.wantFiltered)
			}
		})
	}
}

// Consul reads the token from ?token=, X-Consul-Token or a Bearer
// Authorization header.
func TestACLTokenPlaces(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	a, _ := startAgent(t, consultest.Options{ACLToken: aclToken})
	base := "http://" + a.Addr() + "/v1/agent/self"
	tests := []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"query", base + "?token=" + aclToken, nil, http.StatusOK},
		{"X-Consul-Token", base, http.Header{"X-Consul-Token": {aclToken}}, http.StatusOK},
		{"Bearer", base, http.Header{"Authorization": {"Bearer " + aclToken}}, http.StatusOK},
		{"wrong Bearer", base, http.Header{"Authorization": {"Bearer other"}}, http.StatusForbidden},
		{"none", base, nil, http.StatusForbidden},
	}
	for _, tt := range tests {
		resp, body := rawRequest(ctx, t, "GET", tt.url, tt.header, "")
		if resp.StatusCode != tt.want {
			t.Errorf("%s: got %d %q, want %d", tt.name, resp.StatusCode, body, tt.want)
		}
		if got := resp.Header.Get("X-Consul-Default-ACL-Policy"); got != "deny" {
			t.Errorf("%s: X-Consul-Default-ACL-Policy %q, want deny", tt.name, got)
		}
	}
}
