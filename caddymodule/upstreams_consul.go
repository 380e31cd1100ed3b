package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

func init() {
	caddy.RegisterModule(ConsulUpstreams{})
}

// ConsulUpstreams is the Consul backend source, for Caddy's reverse_proxy
// (`dynamic consul`) and for ws_balancer (`dynamic consul`, or its short
// form, the consul block): the passing instances of a Consul service.
// Unlike the DNS-based sources it does not poll: one blocking-query watch
// per distinct configuration, shared by every handler and across config
// reloads, keeps the list current within a second of a change in Consul.
//
// reverse_proxy gets the instances as dynamic upstreams, without those
// that publish ws_draining=true; with lb_policy ws_least_conn, the load
// reports the backends publish (ws_connections, ws_capacity) make the
// choice global across balancer instances. ws_balancer gets its upstreams
// from the source directly, draining marks and load reports included, and
// balances by the global count; Consul's health checks are the backends'
// health.
type ConsulUpstreams struct {
	ConsulConfig

	// rp is reverse_proxy's view of the service, and the view of the
	// ws_balancer handlers that need no other.
	rp ConsulSource

	// views are the ws_balancer handlers' own views (their max_conns, or
	// wss:// backends). Handlers provision and clean up in the config's
	// load and unload, one at a time: no lock.
	views []*ConsulSource
}

// CaddyModule returns the Caddy module information.
func (ConsulUpstreams) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.upstreams.consul",
		New: func() caddy.Module { return new(ConsulUpstreams) },
	}
}

// Provision starts (or joins) the watch. It fails if Consul refuses the
// token; if Consul cannot be reached, it succeeds with no upstreams and the
// watch keeps trying.
func (cu *ConsulUpstreams) Provision(ctx caddy.Context) error {
	// The Backends carry the load reports for ws_least_conn; reverse_proxy
	// counts its own requests in its own Hosts.
	cu.rp.ConsulConfig = cu.ConsulConfig
	_, err := cu.rp.Start(ctx, usagePoolStore{}, 0)
	return err
}

// Cleanup leaves the watch, which stops with its last user.
func (cu *ConsulUpstreams) Cleanup() error {
	cu.rp.Stop()
	for _, v := range cu.views {
		v.Stop()
	}
	cu.views = nil
	return nil
}

// GetUpstreams returns the current instances. It only reads memory: the
// watch runs in the background. Each call returns new Upstream values, since
// reverse_proxy fills them in per request.
func (cu *ConsulUpstreams) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	ups := cu.rp.source.Upstreams()
	out := make([]*reverseproxy.Upstream, 0, len(ups))
	for _, u := range ups {
		if u.Draining() {
			continue
		}
		out = append(out, &reverseproxy.Upstream{Dial: u.Addr()})
	}
	return out, nil
}

// startWS gives a ws_balancer handler its view of the service: the
// provisioned one when the handler caps nothing and dials ws://, else one
// of its own over the same watch, stopped by the returned func (or by
// Cleanup).
func (cu *ConsulUpstreams) startWS(ctx caddy.Context, store balancer.BackendStore, maxConns int64, scheme string) (balancer.UpstreamSource, func(), error) {
	if maxConns == 0 && scheme == schemeWS && store == (usagePoolStore{}) {
		return cu.rp.source, func() {}, nil
	}
	v := &ConsulSource{ConsulConfig: cu.ConsulConfig, scheme: scheme}
	src, err := v.Start(ctx, store, maxConns)
	if err != nil {
		return nil, nil, err
	}
	cu.views = append(cu.views, v)
	return src, v.Stop, nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens:
// `dynamic consul ...` takes the options of the consul block (README.md,
// "With Consul").
func (cu *ConsulUpstreams) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume upstream source name
	return cu.unmarshalBlock(d)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*ConsulUpstreams)(nil)
	_ caddy.CleanerUpper          = (*ConsulUpstreams)(nil)
	_ reverseproxy.UpstreamSource = (*ConsulUpstreams)(nil)
	_ caddyfile.Unmarshaler       = (*ConsulUpstreams)(nil)
	_ wsSource                    = (*ConsulUpstreams)(nil)
)
