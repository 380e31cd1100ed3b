package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

// unmarshalSourceOption parses the options of the ws_balancer block that
// say where the backends are and how their health is checked: backends,
// dynamic, consul and reverse_proxy's active health check options (the
// syntax is in README.md). It reports whether the option was one of them.
func (h *Handler) unmarshalSourceOption(d *caddyfile.Dispenser) (bool, error) {
	switch opt := d.Val(); {
	case opt == "backends":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		h.Backends = append(h.Backends, args...)

	case opt == "consul":
		h.Consul = new(ConsulSource)
		return true, h.Consul.UnmarshalCaddyfile(d)

	case opt == "dynamic":
		// As reverse_proxy's dynamic: any module of its namespace.
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		name := d.Val()
		modID := "http.reverse_proxy.upstreams." + name
		unm, err := caddyfile.UnmarshalModule(d, modID)
		if err != nil {
			return true, err
		}
		src, ok := unm.(reverseproxy.UpstreamSource)
		if !ok {
			return true, d.Errf("module %s (%T) is not an upstream source", modID, unm)
		}
		h.DynamicBackendsRaw = caddyconfig.JSONModuleObject(src, "source", name, nil)

	case healthOptions[opt]:
		return true, h.unmarshalHealthOption(d)

	default:
		return false, nil
	}
	return true, nil
}

// healthOptions are reverse_proxy's active health check options.
var healthOptions = map[string]bool{
	"health_uri": true, "health_path": true, "health_upstream": true, "health_port": true,
	"health_headers": true, "health_method": true, "health_request_body": true,
	"health_interval": true, "health_timeout": true, "health_status": true, "health_body": true,
	"health_follow_redirects": true, "health_passes": true, "health_fails": true,
}

// unmarshalHealthOption parses one active health check option with
// reverse_proxy's own parser, so that names, arguments, meanings and
// errors are reverse_proxy's: the option's tokens go to it inside a
// reverse_proxy block of their own, and it fills in h's active checks.
func (h *Handler) unmarshalHealthOption(d *caddyfile.Dispenser) error {
	seg := d.NextSegment()
	if h.HealthChecks == nil {
		h.HealthChecks = new(HealthChecks)
	}
	if h.HealthChecks.Active == nil {
		h.HealthChecks.Active = new(reverseproxy.ActiveHealthChecks)
	}
	// Line 0 is before any real line, and the brace after the option's
	// last token is on a line of its own.
	first, last := seg[0], seg[len(seg)-1]
	tokens := make([]caddyfile.Token, 0, len(seg)+3)
	tokens = append(tokens,
		caddyfile.Token{File: first.File, Text: "reverse_proxy"},
		caddyfile.Token{File: first.File, Text: "{"})
	tokens = append(tokens, seg...)
	tokens = append(tokens, caddyfile.Token{File: last.File, Line: last.Line + last.NumLineBreaks() + 1, Text: "}"})
	rp := &reverseproxy.Handler{HealthChecks: &reverseproxy.HealthChecks{Active: h.HealthChecks.Active}}
	return rp.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
}
