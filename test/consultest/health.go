package consultest

import (
	"net/http"
	"strings"

	"github.com/hashicorp/consul/api"
)

// handleHealthService serves GET /v1/health/service/:name: the instances of a
// service with their node and checks, from the catalog (so output-only check
// updates show here only once the agent has synced them).
func (a *Agent) handleHealthService(w http.ResponseWriter, r *http.Request) error {
	name := strings.TrimPrefix(r.URL.Path, "/v1/health/service/")
	if name == "" {
		return badRequest("Missing service name")
	}
	params := r.URL.Query()
	passing, err := boolParam(params, api.HealthPassing)
	if err != nil {
		return badRequest("Invalid value for ?passing")
	}
	q, err := a.parseQuery(r)
	if err != nil {
		return err
	}
	tags, nodeMeta := params["tag"], params["node-meta"]

	return a.blockingQuery(w, r, q, func() (uint64, any, bool) {
		instances := a.cat.instancesOf(name)
		idx := a.cat.indexForService(name, len(instances) > 0, true)
		entries := []*api.ServiceEntry{}
		if !nodeMetaMatches(a.cat.node.Meta, nodeMeta) {
			return idx, entries, false
		}
		for _, svc := range instances {
			if !hasTags(svc.Tags, tags) {
				continue
			}
			e := a.serviceEntryLocked(svc)
			if passing && !allPassing(e.Checks) {
				continue
			}
			entries = append(entries, e)
		}
		if !q.authz.allows() && len(entries) > 0 {
			return idx, []*api.ServiceEntry{}, true
		}
		return idx, entries, false
	})
}

// serviceEntryLocked joins an instance with its node and checks, node checks
// first, as Consul's CheckServiceNodes does.
func (a *Agent) serviceEntryLocked(svc *api.AgentService) *api.ServiceEntry {
	node := a.cat.node
	s := cloneService(*svc)
	checks := api.HealthChecks{}
	for _, hc := range a.cat.checksOf("") {
		c := cloneCheck(*hc)
		checks = append(checks, &c)
	}
	for _, hc := range a.cat.checksOf(svc.ID) {
		c := cloneCheck(*hc)
		checks = append(checks, &c)
	}
	return &api.ServiceEntry{Node: &node, Service: &s, Checks: checks}
}

// allPassing is ?passing: every check, node checks included, must pass;
// warning does not.
func allPassing(checks api.HealthChecks) bool {
	for _, c := range checks {
		if c.Status != api.HealthPassing {
			return false
		}
	}
	return true
}

// hasTags reports whether an instance has every wanted tag; Consul compares
// tags case-insensitively.
func hasTags(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			if strings.EqualFold(h, w) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// nodeMetaMatches applies ?node-meta=key:value filters.
func nodeMetaMatches(meta map[string]string, filters []string) bool {
	for _, f := range filters {
		key, value, _ := strings.Cut(f, ":")
		if v, ok := meta[key]; !ok || v != value {
			return false
		}
	}
	return true
}
