package caddymodule

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("ws_balancer", parseCaddyfile)
	// Right before respond, so that no order line is needed: ws_balancer
	// passes on what is not an upgrade, and a site's respond,
	// reverse_proxy or file_server (all after respond) then serves it,
	// whatever the order of lines in the site block. Just before
	// reverse_proxy would be after respond, and a site's catch-all
	// `respond "page"` would answer the upgrades. After abort and error,
	// so that those still guard the site. A user's order line wins.
	httpcaddyfile.RegisterDirectiveOrder("ws_balancer", httpcaddyfile.Before, "respond")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := new(Handler)
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ws_balancer [<matcher>] [<backends...>] {
//		<options>
//	}
//
// README.md lists the options, with their syntax (once, there: a test
// adapts every Caddyfile in the docs, so that they cannot drift from this
// parser). Each concern parses its own: unmarshalSourceOption (backends,
// dynamic, consul, health_*), unmarshalUpstreamOption (header_up,
// header_down, tls_*), unmarshalOpsOption and unmarshalAssignOption.
// The directive needs no order line: it is registered before respond (see
// init), and a global `order ws_balancer ...` still overrides that.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	h.Backends = append(h.Backends, d.RemainingArgs()...)
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] && !repeatableOptions[opt] {
			return d.Errf("option %q given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "mode":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.Mode = d.Val()
			if h.Mode != modeProxy && h.Mode != modeAssign {
				return d.Errf("unknown mode %q (want %q or %q)", h.Mode, modeProxy, modeAssign)
			}
		case "max_conns":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			h.MaxConns = int64(n)
		case "max_attempts":
			n, err := intArg(d)
			if err != nil {
				return err
			}
			h.MaxAttempts = n
		case "fail_duration":
			if err := durationArg(d, &h.FailDuration); err != nil {
				return err
			}
		case "dial_timeout":
			if err := durationArg(d, &h.DialTimeout); err != nil {
				return err
			}
		case "handshake_timeout":
			if err := durationArg(d, &h.HandshakeTimeout); err != nil {
				return err
			}
		case "retry_after":
			if err := durationArg(d, &h.RetryAfter); err != nil {
				return err
			}
		case "reject_non_websocket":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.RejectNonWebSocket = true
		case "source_addresses":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.SourceAddresses = args
		default:
			if err := h.unmarshalOtherOption(d); err != nil {
				return err
			}
		}
	}
	if d.Next() {
		return d.Errf("unexpected token %q after the ws_balancer block", d.Val())
	}
	return nil
}

// unmarshalOtherOption passes an option to the parser of its concern;
// the last one, assign mode's, refuses what no parser knows.
func (h *Handler) unmarshalOtherOption(d *caddyfile.Dispenser) error {
	for _, parse := range []func(*caddyfile.Dispenser) (bool, error){
		h.unmarshalSourceOption, h.unmarshalUpstreamOption, h.unmarshalOpsOption, h.unmarshalAffinityOption,
	} {
		if ok, err := parse(d); ok {
			return err
		}
	}
	return h.unmarshalAssignOption(d)
}

// repeatableOptions may be given more than once; they add up.
var repeatableOptions = map[string]bool{"backends": true, "header_up": true, "header_down": true}

// intArg reads exactly one non-negative integer argument.
func intArg(d *caddyfile.Dispenser) (int, error) {
	opt := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	n, err := strconv.Atoi(d.Val())
	if err != nil || n < 0 {
		return 0, d.Errf("%s: %q is not a non-negative integer", opt, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return n, nil
}

// durationArg reads exactly one non-negative duration argument.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	opt := d.Val()
	if !d.NextArg() {
		return d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur < 0 {
		return d.Errf("%s: %q is not a valid duration", opt, d.Val())
	}
	if d.NextArg() {
		return d.ArgErr()
	}
	*dst = caddy.Duration(dur)
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
