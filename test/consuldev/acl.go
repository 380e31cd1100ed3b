package consuldev

import (
	"testing"

	"github.com/hashicorp/consul/api"
)

// Token creates an ACL policy with rules (HCL, e.g. `service "echo" {
// policy = "write" }`) and a token holding only that policy, and returns the
// token's secret. The agent must run with Options.ACL.
func (a *Agent) Token(tb testing.TB, name, rules string) string {
	tb.Helper()
	acl := a.Client(tb, ManagementToken).ACL()
	policy, _, err := acl.PolicyCreate(&api.ACLPolicy{Name: name, Rules: rules}, nil)
	if err != nil {
		tb.Fatalf("creating ACL policy %s: %v", name, err)
	}
	token, _, err := acl.TokenCreate(&api.ACLToken{
		Description: name,
		Policies:    []*api.ACLTokenPolicyLink{{ID: policy.ID}},
	}, nil)
	if err != nil {
		tb.Fatalf("creating ACL token for %s: %v", name, err)
	}
	return token.SecretID
}

// BackendRules is what a backend needs: write its own service (register,
// re-register with new meta, update its TTL check, deregister).
func BackendRules(service string) string {
	return `service "` + service + `" { policy = "write" }`
}

// BalancerRules is what a balancer needs to watch a service's healthy
// instances: read the service and the nodes they run on.
func BalancerRules(service string) string {
	return `service "` + service + `" { policy = "read" }
node_prefix "" { policy = "read" }`
}
