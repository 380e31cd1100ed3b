package caddymodule

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/wsbalancer/caddy-wsbalancer/consul"
)

func init() {
	caddy.RegisterModule(ConsulUpstreams{})
}

// ConsulUpstreams gives Caddy's reverse_proxy the passing instances of a
// Consul service as dynamic upstreams, dialled at the service's address and
// port (the node's address if the service has none). Instances that publish
// ws_draining=true in their meta are left out. Unlike the DNS-based sources
// it does not poll: one blocking-query watch per distinct configuration,
// shared by every handler and across config reloads, keeps the list current
// within a second of a change in Consul.
//
// With lb_policy ws_least_conn, the load reports the backends publish
// (ws_connections, ws_capacity) make the choice global across balancer
// instances.
type ConsulUpstreams struct {
	ConsulConfig

	watcher *sharedWatcher
	source  *consul.Source
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
	logger := ctx.Logger().Named("consul")
	w, err := acquireWatcher(cu.resolve(), logger)
	if err != nil {
		return err
	}
	cu.watcher = w
	// The Backends carry the load reports for ws_least_conn; reverse_proxy
	// counts its own requests in its own Hosts.
	cu.source = consul.NewSource(w.Watcher, registeringStore{usagePoolStore{}}, &consul.SourceOptions{Logger: logger})
	return nil
}

// Cleanup leaves the watch, which stops with its last user.
func (cu *ConsulUpstreams) Cleanup() error {
	if cu.source != nil {
		cu.source.Close()
		cu.source = nil
	}
	if cu.watcher != nil {
		cu.watcher.release()
		cu.watcher = nil
	}
	return nil
}

// GetUpstreams returns the current instances. It only reads memory: the
// watch runs in the background. Each call returns new Upstream values, since
// reverse_proxy fills them in per request.
func (cu *ConsulUpstreams) GetUpstreams(*http.Request) ([]*reverseproxy.Upstream, error) {
	ups := cu.source.Upstreams()
	out := make([]*reverseproxy.Upstream, 0, len(ups))
	for _, u := range ups {
		if u.IsDraining() {
			continue
		}
		out = append(out, &reverseproxy.Upstream{Dial: u.Addr()})
	}
	return out, nil
}

// UnmarshalCaddyfile sets up the source from Caddyfile tokens. Syntax:
//
//	dynamic consul [<service>] {
//		service     <name>
//		tag         <tag>
//		address     <host:port|url>
//		scheme      http|https
//		token       <token>
//		datacenter  <dc>
//		ca_file     <path>
//		ca_path     <dir>
//		cert_file   <path>
//		key_file    <path>
//		tls_server_name <name>
//		tls_insecure_skip_verify
//		wait        <duration>
//		consistency default|stale|consistent
//	}
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
)
