package caddymodule

import (
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/caddyserver/caddy/v2/modules/caddytls"
)

// unmarshalUpstreamOption parses the options of the ws_balancer block that
// shape what goes to a backend and back: header_up and header_down (the
// upgrade request's and the answer's headers), and the tls_* options for
// wss:// backends. Names and arguments are reverse_proxy's (its header_up
// and header_down, and its HTTP transport's tls_* options); the syntax is
// in UnmarshalCaddyfile's doc. It reports whether the option was one of
// them.
func (h *Handler) unmarshalUpstreamOption(d *caddyfile.Dispenser) (bool, error) {
	switch opt := d.Val(); opt {
	case "header_up", "header_down":
		args := d.RemainingArgs()
		if len(args) == 0 || len(args) > 3 {
			return true, d.ArgErr()
		}
		var value string
		var replacement *string
		if len(args) > 1 {
			value = args[1]
		}
		if len(args) == 3 {
			replacement = &args[2]
		}
		if err := headers.CaddyfileHeaderOp(h.headerOps(opt == "header_up"), args[0], value, replacement); err != nil {
			return true, d.Err(err.Error())
		}

	case "tls_trusted_ca_certs":
		files := d.RemainingArgs()
		if len(files) == 0 {
			return true, d.ArgErr()
		}
		if h.upstreamTLS().CARaw != nil {
			return true, d.Err("give tls_trusted_ca_certs or tls_trust_pool, not both")
		}
		// The file CA pool module rather than reverse_proxy's deprecated
		// root_ca_pem_files: the same trust, without a deprecation
		// warning at every load, and a missing file is an error.
		pool := caddytls.FileCAPool{TrustedCACertPEMFiles: files}
		h.upstreamTLS().CARaw = caddyconfig.JSONModuleObject(pool, "provider", "file", nil)

	case "tls_trust_pool":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		stem := d.Val()
		unm, err := caddyfile.UnmarshalModule(d, "tls.ca_pool.source."+stem)
		if err != nil {
			return true, err
		}
		ca, ok := unm.(caddytls.CA)
		if !ok {
			return true, d.Errf("module tls.ca_pool.source.%s is not a CA pool", stem)
		}
		if h.upstreamTLS().CARaw != nil {
			return true, d.Err("give tls_trusted_ca_certs or tls_trust_pool, not both")
		}
		h.upstreamTLS().CARaw = caddyconfig.JSONModuleObject(ca, "provider", stem, nil)

	case "tls_client_auth":
		switch args := d.RemainingArgs(); len(args) {
		case 1:
			h.upstreamTLS().ClientCertificateAutomate = args[0]
		case 2:
			t := h.upstreamTLS()
			t.ClientCertificateFile, t.ClientCertificateKeyFile = args[0], args[1]
		default:
			return true, d.ArgErr()
		}

	case "tls_server_name":
		if !d.NextArg() {
			return true, d.ArgErr()
		}
		h.upstreamTLS().ServerName = d.Val()
		if d.NextArg() {
			return true, d.ArgErr()
		}

	case "tls_insecure_skip_verify":
		if d.NextArg() {
			return true, d.ArgErr()
		}
		h.upstreamTLS().InsecureSkipVerify = true

	default:
		return false, nil
	}
	return true, nil
}

// headerOps returns the request (header_up) or response (header_down)
// operations, made on first use.
func (h *Handler) headerOps(up bool) *headers.HeaderOps {
	if h.Headers == nil {
		h.Headers = new(headers.Handler)
	}
	if up {
		if h.Headers.Request == nil {
			h.Headers.Request = new(headers.HeaderOps)
		}
		return h.Headers.Request
	}
	if h.Headers.Response == nil {
		h.Headers.Response = &headers.RespHeaderOps{HeaderOps: new(headers.HeaderOps)}
	}
	return h.Headers.Response.HeaderOps
}

// upstreamTLS returns the upstream TLS config, made on first use.
func (h *Handler) upstreamTLS() *reverseproxy.TLSConfig {
	if h.TLS == nil {
		h.TLS = new(reverseproxy.TLSConfig)
	}
	return h.TLS
}
