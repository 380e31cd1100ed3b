package consuldev

import (
	"errors"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/hashicorp/consul/api"
)

func TestMain(m *testing.M) { os.Exit(Main(m)) }

func register(t *testing.T, c *api.Client, service, id string) error {
	t.Helper()
	return c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: service, Address: "127.0.0.1", Port: 9001,
		Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "30s", Status: api.HealthPassing},
	})
}

// The harness's agent is a real Consul: it serves a registration through
// ?passing, comes back empty after a restart (dev agents keep nothing), and
// refuses connections while stopped.
func TestAgentRestartsEmpty(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{})
	c := a.Client(t, "")
	if err := register(t, c, "restart", "r1"); err != nil {
		t.Fatal(err)
	}
	entries, _, err := c.Health().Service("restart", "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("passing instances = %d, %v; want 1", len(entries), err)
	}
	before := a.RaftIndex(t)
	a.Stop(t)
	if _, err := c.Status().Leader(); err == nil {
		t.Fatal("a stopped agent answered")
	}
	a.Restart(t)
	if a.RaftIndex(t) >= before {
		t.Logf("raft index %d after restart, %d before", a.RaftIndex(t), before)
	}
	entries, _, err = c.Health().Service("restart", "", true, nil)
	if err != nil || len(entries) != 0 {
		t.Fatalf("after a restart: %d instances, %v; want none", len(entries), err)
	}
	// The TTL update of a check the agent forgot: what a backend's library
	// sees after such a restart.
	err = c.Agent().UpdateTTL("ttl:r1", "", api.HealthPassing)
	var se api.StatusError
	if !errors.As(err, &se) {
		t.Fatalf("TTL update of a forgotten check = %v, want a status error", err)
	}
	t.Logf("TTL update of a forgotten check: %d %q", se.Code, se.Body)
}

// ACL tokens made with the harness's rules: a backend may write its own
// service only, a balancer may read it, nobody without a token may do
// either, and a wrong token is not found.
func TestAgentACLTokens(t *testing.T) {
	t.Parallel()
	a := Start(t, Options{ACL: true})
	backend := a.Client(t, a.Token(t, "backend", BackendRules("acl")))
	balancer := a.Client(t, a.Token(t, "balancer", BalancerRules("acl")))
	if err := register(t, backend, "acl", "a1"); err != nil {
		t.Fatalf("backend token registering its service: %v", err)
	}
	if err := register(t, backend, "other", "o1"); err == nil {
		t.Error("backend token registered another service")
	}
	if err := register(t, balancer, "acl", "a2"); err == nil {
		t.Error("balancer token registered a service")
	}
	entries, meta, err := balancer.Health().Service("acl", "", true, nil)
	if err != nil || len(entries) != 1 {
		t.Fatalf("balancer read: %d instances, %v", len(entries), err)
	}
	_ = meta
	// Consul does not tell a request without a token that ACLs filtered
	// its answer (maskResultsFilteredByACLs in agent/consul/rpc.go): an
	// anonymous read looks like a service with no instances.
	entries, meta, err = a.Client(t, "").Health().Service("acl", "", true, nil)
	if err != nil || len(entries) != 0 || meta.ResultsFilteredByACLs {
		t.Errorf("anonymous read: %d instances, filtered %v, %v; want none, not flagged", len(entries), meta.ResultsFilteredByACLs, err)
	}
	_, _, err = a.Client(t, "not-a-token").Health().Service("acl", "", true, nil)
	if err == nil || !strings.Contains(err.Error(), "ACL not found") {
		t.Errorf("wrong token read: %v, want ACL not found", err)
	}
}

// A Front counts what passes through it and fails on demand.
func TestFrontCountsAndFails(t *testing.T) {
	t.Parallel()
	a := Shared(t)
	f := NewFront(t, a.Addr())
	c := NewClient(t, f.Addr(), "")
	if err := register(t, c, "front", "f1"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Health().Service("front", "", true, nil); err != nil {
		t.Fatal(err)
	}
	if n := f.Requests("/v1/health/service/front"); n != 1 {
		t.Errorf("counted %d health queries, want 1", n)
	}
	f.FailWith(http.StatusServiceUnavailable)
	_, _, err := c.Health().Service("front", "", true, nil)
	var se api.StatusError
	if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
		t.Errorf("with FailWith(503): %v", err)
	}
	f.SetFault(Reset)
	if _, _, err := c.Health().Service("front", "", true, nil); err == nil || errors.As(err, &se) {
		t.Errorf("with Reset: %v, want a transport error", err)
	}
	f.SetFault(Pass)
	if _, _, err := c.Health().Service("front", "", true, nil); err != nil {
		t.Errorf("after Pass again: %v", err)
	}
}
