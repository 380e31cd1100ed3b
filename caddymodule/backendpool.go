package caddymodule

import (
	"github.com/caddyserver/caddy/v2"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// backendStates holds the state of every backend by dial address, across
// config reloads: a reloaded handler finds the live counts of the connections
// the previous config opened, because those connections still hold their
// references here.
var backendStates = caddy.NewUsagePool()

// backendEntry adapts a Backend to caddy.Destructor for the pool.
type backendEntry struct{ *balancer.Backend }

func (backendEntry) Destruct() error { return nil }

// usagePoolStore is the balancer.BackendStore over backendStates.
type usagePoolStore struct{}

func (usagePoolStore) Acquire(addr string) *balancer.Backend {
	v, _, _ := backendStates.LoadOrNew(addr, func() (caddy.Destructor, error) {
		return backendEntry{balancer.NewBackend(addr)}, nil
	})
	return v.(backendEntry).Backend
}

func (usagePoolStore) Release(addr string) { _, _ = backendStates.Delete(addr) }

// Interface guards
var _ balancer.BackendStore = usagePoolStore{}
