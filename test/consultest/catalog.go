package consultest

import (
	"maps"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
)

// handleCatalogServices serves GET /v1/catalog/services: every service name
// with the union of its instances' tags.
func (a *Agent) handleCatalogServices(w http.ResponseWriter, r *http.Request) error {
	q, err := a.parseQuery(r)
	if err != nil {
		return err
	}
	return a.blockingQuery(w, r, q, func() (uint64, any, bool) {
		tagSets := make(map[string]map[string]bool)
		for _, svc := range a.cat.services {
			set := tagSets[svc.Service]
			if set == nil {
				set = make(map[string]bool)
				tagSets[svc.Service] = set
			}
			for _, t := range svc.Tags {
				set[t] = true
			}
		}
		out := make(map[string][]string, len(tagSets))
		for name, set := range tagSets {
			out[name] = append([]string{}, slices.Sorted(maps.Keys(set))...)
		}
		idx := a.cat.maxIndex(false)
		if !q.authz.allows() && len(out) > 0 {
			return idx, map[string][]string{}, true
		}
		return idx, out, false
	})
}

// handleCatalogService serves GET /v1/catalog/service/:name: the raw
// instances, health not considered.
func (a *Agent) handleCatalogService(w http.ResponseWriter, r *http.Request) error {
	name := strings.TrimPrefix(r.URL.Path, "/v1/catalog/service/")
	if name == "" {
		return badRequest("Missing service name")
	}
	q, err := a.parseQuery(r)
	if err != nil {
		return err
	}
	params := r.URL.Query()
	tags, nodeMeta := params["tag"], params["node-meta"]

	return a.blockingQuery(w, r, q, func() (uint64, any, bool) {
		instances := a.cat.instancesOf(name)
		idx := a.cat.indexForService(name, len(instances) > 0, false)
		out := []*api.CatalogService{}
		if !nodeMetaMatches(a.cat.node.Meta, nodeMeta) {
			return idx, out, false
		}
		for _, svc := range instances {
			if hasTags(svc.Tags, tags) {
				out = append(out, a.catalogServiceLocked(svc))
			}
		}
		if !q.authz.allows() && len(out) > 0 {
			return idx, []*api.CatalogService{}, true
		}
		return idx, out, false
	})
}

func (a *Agent) catalogServiceLocked(svc *api.AgentService) *api.CatalogService {
	n := a.cat.node
	s := cloneService(*svc)
	return &api.CatalogService{
		ID:                       n.ID,
		Node:                     n.Node,
		Address:                  n.Address,
		Datacenter:               n.Datacenter,
		TaggedAddresses:          maps.Clone(n.TaggedAddresses),
		NodeMeta:                 maps.Clone(n.Meta),
		ServiceID:                s.ID,
		ServiceName:              s.Service,
		ServiceAddress:           s.Address,
		ServiceTaggedAddresses:   s.TaggedAddresses,
		ServiceTags:              s.Tags,
		ServiceMeta:              s.Meta,
		ServicePort:              s.Port,
		ServiceWeights:           api.Weights{Passing: s.Weights.Passing, Warning: s.Weights.Warning},
		ServiceEnableTagOverride: s.EnableTagOverride,
		CreateIndex:              s.CreateIndex,
		ModifyIndex:              s.ModifyIndex,
	}
}
