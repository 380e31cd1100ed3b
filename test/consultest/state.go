package consultest

import (
	"maps"
	"reflect"
	"slices"
	"time"

	"github.com/hashicorp/consul/api"
)

const (
	// consulServiceID is the service the servers register for themselves. It
	// lives in the catalog only, never in the agent's local state, so the
	// agent's sync must leave it alone.
	consulServiceID = "consul"
	serfCheckID     = "serfHealth"
	nodeID          = "b3f6f2a0-7e3c-4c1e-9d4e-7e57d0b1e000"
	nodeAddress     = "127.0.0.1"
)

// localState is what the agent itself holds, as /v1/agent/services and
// /v1/agent/checks show it.
type localState struct {
	services map[string]*localService // by service ID
	checks   map[string]*localCheck   // by check ID
}

func newLocalState() localState {
	return localState{
		services: make(map[string]*localService),
		checks:   make(map[string]*localCheck),
	}
}

// localService is the agent's record of a service. inSync mirrors Consul's
// anti-entropy flag: false means the servers have not seen this definition.
type localService struct {
	svc    api.AgentService
	inSync bool
}

// localCheck is the agent's record of a check, with the timers Consul's agent
// runs for it.
type localCheck struct {
	check  api.HealthCheck
	inSync bool

	ttl        time.Duration // > 0 for TTL checks
	expires    time.Time     // TTL deadline; zero once expired, until the next update
	lastOutput string        // output of the last TTL update, quoted on expiry

	reapAfter time.Duration // effective deregister_critical_service_after; 0 never
	// criticalSince is set when a status update makes the check critical and
	// cleared by any other status, like Consul's CheckState.CriticalTime. A
	// check registered as critical is not counted until an update (usually
	// the TTL expiring) says so.
	criticalSince time.Time
	// deferUntil is when a held output-only update is synced; zero if none.
	deferUntil time.Time
}

// serviceChecks returns the local checks of a service, sorted by ID.
func (l *localState) serviceChecks(serviceID string) []*localCheck {
	var out []*localCheck
	for _, id := range slices.Sorted(maps.Keys(l.checks)) {
		if c := l.checks[id]; c.check.ServiceID == serviceID {
			out = append(out, c)
		}
	}
	return out
}

// removeService forgets a service and its checks.
func (l *localState) removeService(id string) {
	delete(l.services, id)
	for checkID, c := range l.checks {
		if c.check.ServiceID == id {
			delete(l.checks, checkID)
		}
	}
}

// catalog is the servers' view, as /v1/health and /v1/catalog show it, with
// Consul's Raft and table indexes.
type catalog struct {
	raftIndex uint64 // bumped by every write the servers apply

	// Table indexes move only when a write modifies the table.
	nodesIndex, servicesIndex, checksIndex uint64
	// serviceIndex holds, per service name with instances, the index of the
	// last change to any of its instances or their checks. It is what
	// blocking queries on one service compare against.
	serviceIndex map[string]uint64
	// extinctionIndex is the index at which the last instance of some service
	// went away; queries for services with no instances report it.
	extinctionIndex uint64

	node     api.Node
	services map[string]*api.AgentService // by service ID
	checks   map[string]*api.HealthCheck  // by check ID
}

// newCatalog returns the catalog of a fresh dev agent: Raft's own first
// write, the node with serfHealth, and the "consul" service.
func newCatalog(dc, nodeName string) catalog {
	c := catalog{
		raftIndex:    1,
		serviceIndex: make(map[string]uint64),
		services:     make(map[string]*api.AgentService),
		checks:       make(map[string]*api.HealthCheck),
	}

	c.raftIndex++
	c.nodesIndex, c.checksIndex = c.raftIndex, c.raftIndex
	c.node = api.Node{
		ID:         nodeID,
		Node:       nodeName,
		Address:    nodeAddress,
		Datacenter: dc,
		TaggedAddresses: map[string]string{
			"lan": nodeAddress, "lan_ipv4": nodeAddress,
			"wan": nodeAddress, "wan_ipv4": nodeAddress,
		},
		Meta:        map[string]string{"consul-network-segment": ""},
		CreateIndex: c.raftIndex,
		ModifyIndex: c.raftIndex,
	}
	c.checks[serfCheckID] = &api.HealthCheck{
		Node:        nodeName,
		CheckID:     serfCheckID,
		Name:        "Serf Health Status",
		Status:      api.HealthPassing,
		Output:      "Agent alive and reachable",
		ServiceTags: []string{},
		CreateIndex: c.raftIndex,
		ModifyIndex: c.raftIndex,
	}

	c.raftIndex++
	c.servicesIndex = c.raftIndex
	c.serviceIndex[consulServiceID] = c.raftIndex
	c.services[consulServiceID] = &api.AgentService{
		ID:          consulServiceID,
		Service:     consulServiceID,
		Tags:        []string{},
		Meta:        map[string]string{},
		Port:        8300,
		Weights:     api.AgentWeights{Passing: 1, Warning: 1},
		CreateIndex: c.raftIndex,
		ModifyIndex: c.raftIndex,
	}
	return c
}

// maxIndex is the index of the whole catalog, optionally without checks.
func (c *catalog) maxIndex(withChecks bool) uint64 {
	idx := max(c.nodesIndex, c.servicesIndex)
	if withChecks {
		idx = max(idx, c.checksIndex)
	}
	return idx
}

// indexForService is Consul's maxIndexForService: the service's own index if
// it has instances, else the last extinction index, else the catalog's.
// exists says whether the query found any instance, before tag filtering.
func (c *catalog) indexForService(name string, exists, withChecks bool) uint64 {
	if !exists && c.extinctionIndex > 0 {
		return c.extinctionIndex
	}
	if idx, ok := c.serviceIndex[name]; ok {
		return idx
	}
	return c.maxIndex(withChecks)
}

// instancesOf returns the instances of a service, sorted by ID.
func (c *catalog) instancesOf(name string) []*api.AgentService {
	var out []*api.AgentService
	for _, id := range slices.Sorted(maps.Keys(c.services)) {
		if s := c.services[id]; s.Service == name {
			out = append(out, s)
		}
	}
	return out
}

// checksOf returns the catalog checks of a service instance, sorted by ID.
func (c *catalog) checksOf(serviceID string) []*api.HealthCheck {
	var out []*api.HealthCheck
	for _, id := range slices.Sorted(maps.Keys(c.checks)) {
		if hc := c.checks[id]; hc.ServiceID == serviceID {
			out = append(out, hc)
		}
	}
	return out
}

// putService stores a service at index idx and reports whether that changed
// anything; an identical registration leaves every index alone.
func (c *catalog) putService(idx uint64, svc api.AgentService) bool {
	svc = cloneService(svc)
	old := c.services[svc.ID]
	if old != nil {
		svc.CreateIndex, svc.ModifyIndex = old.CreateIndex, old.ModifyIndex
		if reflect.DeepEqual(*old, svc) {
			return false
		}
	} else {
		svc.CreateIndex = idx
	}
	svc.ModifyIndex = idx
	c.services[svc.ID] = &svc
	c.servicesIndex = idx
	c.serviceIndex[svc.Service] = idx
	if old != nil && old.Service != svc.Service {
		c.instanceGone(idx, old.Service)
	}
	return true
}

// putCheck stores a check at index idx and reports whether it changed.
func (c *catalog) putCheck(idx uint64, hc api.HealthCheck) bool {
	hc = cloneCheck(hc)
	old := c.checks[hc.CheckID]
	if old != nil {
		hc.CreateIndex, hc.ModifyIndex = old.CreateIndex, old.ModifyIndex
		if reflect.DeepEqual(*old, hc) {
			return false
		}
	} else {
		hc.CreateIndex = idx
	}
	hc.ModifyIndex = idx
	c.checks[hc.CheckID] = &hc
	c.checksIndex = idx
	if hc.ServiceName != "" {
		c.serviceIndex[hc.ServiceName] = idx
	}
	return true
}

// deleteService removes a service and its checks, as Catalog.Deregister by
// service ID does.
func (c *catalog) deleteService(idx uint64, id string) bool {
	svc := c.services[id]
	if svc == nil {
		return false
	}
	delete(c.services, id)
	c.servicesIndex = idx
	for checkID, hc := range c.checks {
		if hc.ServiceID == id {
			delete(c.checks, checkID)
			c.checksIndex = idx
		}
	}
	c.instanceGone(idx, svc.Service)
	return true
}

// deleteCheck removes one check.
func (c *catalog) deleteCheck(idx uint64, id string) bool {
	hc := c.checks[id]
	if hc == nil {
		return false
	}
	delete(c.checks, id)
	c.checksIndex = idx
	if _, ok := c.serviceIndex[hc.ServiceName]; ok {
		c.serviceIndex[hc.ServiceName] = idx
	}
	return true
}

// instanceGone updates a service's index after one of its instances left;
// the last one leaving makes the service extinct.
func (c *catalog) instanceGone(idx uint64, name string) {
	for _, s := range c.services {
		if s.Service == name {
			c.serviceIndex[name] = idx
			return
		}
	}
	delete(c.serviceIndex, name)
	c.extinctionIndex = idx
}

// syncLocked pushes the agent's out-of-sync state to the catalog the way
// Consul's anti-entropy SyncChanges does after each API call: one server
// write per removed service (its checks go with it), one per service whose
// definition changed (its out-of-sync checks ride along), one per other
// out-of-sync check and one per removed check. Watchers wake only if a write
// modified the catalog.
func (a *Agent) syncLocked() {
	modified := false
	write := func(apply func(idx uint64) bool) {
		a.cat.raftIndex++
		a.writes.Add(1)
		if apply(a.cat.raftIndex) {
			modified = true
		}
	}

	for _, id := range slices.Sorted(maps.Keys(a.cat.services)) {
		if _, ok := a.local.services[id]; ok || id == consulServiceID {
			continue
		}
		write(func(idx uint64) bool { return a.cat.deleteService(idx, id) })
	}

	for _, id := range slices.Sorted(maps.Keys(a.local.services)) {
		ls := a.local.services[id]
		checks := a.local.serviceChecks(id)
		if !ls.inSync {
			write(func(idx uint64) bool {
				m := a.cat.putService(idx, ls.svc)
				for _, c := range checks {
					if !c.inSync {
						m = a.cat.putCheck(idx, c.check) || m
						c.inSync = true
					}
				}
				return m
			})
			ls.inSync = true
		}
		for _, c := range checks {
			if !c.inSync {
				write(func(idx uint64) bool { return a.cat.putCheck(idx, c.check) })
				c.inSync = true
			}
		}
	}

	for _, id := range slices.Sorted(maps.Keys(a.cat.checks)) {
		hc := a.cat.checks[id]
		if hc.ServiceID == "" { // node checks belong to the servers
			continue
		}
		if _, ok := a.local.checks[id]; ok {
			continue
		}
		write(func(idx uint64) bool { return a.cat.deleteCheck(idx, id) })
	}

	if modified {
		a.notifyLocked()
	}
}

// cloneService deep-copies what the catalog must not share with the agent.
func cloneService(s api.AgentService) api.AgentService {
	s.Tags = slices.Clone(s.Tags)
	s.Meta = maps.Clone(s.Meta)
	s.TaggedAddresses = maps.Clone(s.TaggedAddresses)
	return s
}

func cloneCheck(hc api.HealthCheck) api.HealthCheck {
	hc.ServiceTags = slices.Clone(hc.ServiceTags)
	return hc
}
