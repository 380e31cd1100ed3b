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

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	ws_balancer [<matcher>] [<backends...>] {
//		mode                  proxy|assign
//		backends              <backends...>
//		consul {
//			<see ConsulSource>
//		}
//		max_conns             <n>
//		fail_duration         <duration>
//		max_attempts          <n>
//		dial_timeout          <duration>
//		handshake_timeout     <duration>
//		retry_after           <duration>
//		reject_non_websocket
//		source_addresses      <ip|cidr...>
//
//		# upstream request and answer (see caddyfile_upstream.go):
//		header_up             [+|-]<field> [<value|regexp> [<replacement>]]
//		header_down           [+|-]<field> [<value|regexp> [<replacement>]]
//		tls_trusted_ca_certs  <pem_files...>
//		tls_trust_pool        <module> {
//			<module options>
//		}
//		tls_client_auth       <automate_name> | <cert_file> <key_file>
//		tls_server_name       <server_name>
//		tls_insecure_skip_verify
//
//		# operations (see OpsConfig):
//		drain_close_rate      <n>[/s|/m]
//		shutdown_grace        <duration>
//		idle_timeout          <duration>
//		origins               <patterns...>
//		max_conns_per_ip      <n>
//		upgrade_rate          <n>[/s|/m] [<burst>]
//		rebalance {
//			ratio <float>
//			after <duration>
//			rate  <n>[/s|/m]
//		}
//
//		# mode assign only (see AssignConfig):
//		token_key             <path>|<placeholder>
//		token_kid             <kid>
//		token_ttl             <duration>
//		response              auto|redirect|json
//		subject               <text with placeholders>
//		assign_hold           <duration>
//		selection             least_loaded|two_choices
//	}
//
// Backends are host:port or ws:// / wss:// URLs with an optional path.
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
		case "backends":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Backends = append(h.Backends, args...)
		case "consul":
			h.Consul = new(ConsulSource)
			if err := h.Consul.UnmarshalCaddyfile(d); err != nil {
				return err
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
			if ok, err := h.unmarshalUpstreamOption(d); ok {
				if err != nil {
					return err
				}
				continue
			}
			if ok, err := h.unmarshalOpsOption(d); ok {
				if err != nil {
					return err
				}
				continue
			}
			if err := h.unmarshalAssignOption(d); err != nil {
				return err
			}
		}
	}
	if d.Next() {
		return d.Errf("unexpected token %q after the ws_balancer block", d.Val())
	}
	return nil
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
