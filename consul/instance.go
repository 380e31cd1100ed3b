package consul

import (
	"cmp"
	"maps"
	"net"
	"slices"
	"strconv"

	"github.com/hashicorp/consul/api"
)

// Instance is one passing instance of the watched service, reduced to what
// the balancer reads. Instances are compared to decide whether an answer
// from Consul changed anything: a check's output or a node's coordinates
// changing does not; an instance coming, going, moving or re-registering
// (new meta, so a new load report) does.
type Instance struct {
	// ID is the service ID, unique on its node.
	ID string
	// Node is the name of the node the instance is registered on.
	Node string
	// Addr is the dial address, host:port: the service's address, or the
	// node's when the service has none.
	Addr string
	// Meta is the service meta, which carries the load report.
	Meta map[string]string
	// ModifyIndex changes whenever the service is registered again, which is
	// how backends publish a new report: it versions the report.
	ModifyIndex uint64
}

// Instances reduces health entries to Instances sorted by ID and node.
// Entries without a usable address or port are left out and counted in
// skipped.
func Instances(entries []*api.ServiceEntry) (set []Instance, skipped int) {
	set = make([]Instance, 0, len(entries))
	for _, e := range entries {
		if e == nil || e.Service == nil {
			skipped++
			continue
		}
		host := e.Service.Address
		node := ""
		if e.Node != nil {
			node = e.Node.Node
			if host == "" {
				host = e.Node.Address
			}
		}
		if host == "" || e.Service.Port <= 0 || e.Service.Port > 65535 {
			skipped++
			continue
		}
		set = append(set, Instance{
			ID:          e.Service.ID,
			Node:        node,
			Addr:        net.JoinHostPort(host, strconv.Itoa(e.Service.Port)),
			Meta:        maps.Clone(e.Service.Meta),
			ModifyIndex: e.Service.ModifyIndex,
		})
	}
	slices.SortFunc(set, func(a, b Instance) int {
		return cmp.Or(cmp.Compare(a.ID, b.ID), cmp.Compare(a.Node, b.Node))
	})
	return set, skipped
}

// equalInstances reports whether two sorted sets are the same.
func equalInstances(a, b []Instance) bool {
	return slices.EqualFunc(a, b, func(x, y Instance) bool {
		return x.ID == y.ID && x.Node == y.Node && x.Addr == y.Addr &&
			x.ModifyIndex == y.ModifyIndex && maps.Equal(x.Meta, y.Meta)
	})
}

// diffIDs lists the IDs that are in b but not in a (added) and in a but not
// in b (removed), for logs.
func diffIDs(a, b []Instance) (added, removed []string) {
	key := func(in Instance) string { return in.Node + "/" + in.ID }
	inA := make(map[string]bool, len(a))
	for _, in := range a {
		inA[key(in)] = true
	}
	inB := make(map[string]bool, len(b))
	for _, in := range b {
		inB[key(in)] = true
		if !inA[key(in)] {
			added = append(added, in.ID)
		}
	}
	for _, in := range a {
		if !inB[key(in)] {
			removed = append(removed, in.ID)
		}
	}
	return added, removed
}
