package caddymodule

import (
	"errors"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

// ConsulSource discovers backends from Consul. (Being written.)
type ConsulSource struct{}

// Start begins watching Consul and returns the source of upstreams it keeps
// up to date.
func (c *ConsulSource) Start(ctx caddy.Context, store wsbackend.BackendStore, maxConns int64) (wsbackend.UpstreamSource, error) {
	return nil, errors.New("consul discovery: not implemented yet")
}

// Stop ends the watch and releases the backends it holds.
func (c *ConsulSource) Stop() {}

// UnmarshalCaddyfile parses the consul block inside ws_balancer.
func (c *ConsulSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return d.Err("consul block not implemented yet")
}
