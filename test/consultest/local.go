package consultest

import (
	"net/http"

	"github.com/hashicorp/consul/api"
)

// handleAgentServices serves GET /v1/agent/services: the agent's own view,
// which Consul does not serve as a blocking query.
func (a *Agent) handleAgentServices(w http.ResponseWriter, r *http.Request) error {
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	out := make(map[string]*api.AgentService, len(a.local.services))
	for id, ls := range a.local.services {
		s := cloneService(ls.svc)
		s.Datacenter = a.opts.Datacenter
		out[id] = &s
	}
	a.mu.Unlock()
	return writeFiltered(w, authz, out)
}

// handleAgentChecks serves GET /v1/agent/checks. Unlike /v1/health, it shows
// output-only updates at once: they live in the agent until it syncs them.
func (a *Agent) handleAgentChecks(w http.ResponseWriter, r *http.Request) error {
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	a.mu.Lock()
	out := make(map[string]*api.AgentCheck, len(a.local.checks))
	for id, c := range a.local.checks {
		hc := c.check
		out[id] = &api.AgentCheck{
			Node:        hc.Node,
			CheckID:     hc.CheckID,
			Name:        hc.Name,
			Status:      hc.Status,
			Notes:       hc.Notes,
			Output:      hc.Output,
			ServiceID:   hc.ServiceID,
			ServiceName: hc.ServiceName,
			Type:        hc.Type,
		}
	}
	a.mu.Unlock()
	return writeFiltered(w, authz, out)
}

// writeFiltered answers a map, emptied for the anonymous token the way
// Consul's ACL filter empties it.
func writeFiltered[V any](w http.ResponseWriter, authz authorizer, out map[string]V) error {
	if !authz.allows() && len(out) > 0 {
		w.Header().Set("X-Consul-Results-Filtered-By-ACLs", "true")
		out = map[string]V{}
	}
	return writeJSON(w, out)
}

// handleAgentSelf serves GET /v1/agent/self, which clients use to check that
// they reach an agent and that their token works. It needs agent:read.
func (a *Agent) handleAgentSelf(w http.ResponseWriter, r *http.Request) error {
	authz, err := a.resolveToken(r)
	if err != nil {
		return err
	}
	if err := authz.vet("agent:read", a.opts.NodeName); err != nil {
		return err
	}
	return writeJSON(w, map[string]map[string]any{
		"Config": {
			"Datacenter":        a.opts.Datacenter,
			"PrimaryDatacenter": a.opts.Datacenter,
			"NodeName":          a.opts.NodeName,
			"NodeID":            nodeID,
			"Server":            true,
			"Revision":          "consultest",
			"Version":           "0.0.0-consultest",
		},
		"Member": {
			"Name":   a.opts.NodeName,
			"Addr":   nodeAddress,
			"Port":   8301,
			"Status": 1,
			"Tags":   map[string]string{"dc": a.opts.Datacenter, "role": "consul", "acls": a.aclModeTag()},
		},
		"Meta": {"consul-network-segment": ""},
		"TestDouble": {
			"Name":   "consultest",
			"Notice": TestDoubleNotice,
		},
	})
}

// aclModeTag is the "acls" member tag: 1 when ACLs are on, 0 when off.
func (a *Agent) aclModeTag() string {
	if a.opts.ACLToken == "" {
		return string(api.ACLModeDisabled)
	}
	return string(api.ACLModeEnabled)
}

// handleStatusLeader serves GET /v1/status/leader. Like Consul's, it needs no
// token, so it proves connectivity but says nothing about ACLs.
func (a *Agent) handleStatusLeader(w http.ResponseWriter, r *http.Request) error {
	return writeJSON(w, nodeAddress+":8300")
}
