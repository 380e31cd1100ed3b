package caddymodule

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/caddyserver/caddy/v2"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// provisionUpstream sets up the TLS config for wss:// backends and the
// header operations. The TLS config is built here, once: certificate files
// are read and CA pools loaded at provisioning, not per dial. The header
// hooks are set only when operations are configured, so that an upgrade
// without them copies no headers.
func (h *Handler) provisionUpstream(ctx caddy.Context, opts *balancer.ProxyOptions) error {
	if h.TLSInsecureSkipVerify {
		h.upstreamTLS().InsecureSkipVerify = true
	}
	if h.TLS != nil {
		cfg, err := h.TLS.MakeTLSClientConfig(ctx)
		if err != nil {
			return fmt.Errorf("setting up TLS for wss backends: %w", err)
		}
		if cfg == nil {
			cfg = new(tls.Config) // an empty tls block: the system's roots
		}
		if cfg.ClientSessionCache == nil {
			// Every client connection is a new backend connection: resuming
			// sessions spares most of the handshakes a full verification.
			cfg.ClientSessionCache = tls.NewLRUClientSessionCache(0)
		}
		if cfg.InsecureSkipVerify {
			h.logger.Warn("certificates of wss backends are not verified (tls_insecure_skip_verify): for testing only")
		}
		opts.TLSConfig = cfg
	}
	if h.Headers != nil {
		if err := h.Headers.Provision(ctx); err != nil {
			return fmt.Errorf("provisioning header operations: %w", err)
		}
		if h.Headers.Request != nil {
			opts.UpstreamHeaders = h.headerUp
		}
		if h.Headers.Response != nil && h.Headers.Response.HeaderOps != nil {
			opts.DownstreamHeaders = h.headerDown
		}
	}
	return nil
}

// validateUpstream checks the TLS and header options.
func (h *Handler) validateUpstream() error {
	hasTLS := h.TLS != nil || h.TLSInsecureSkipVerify
	if h.Mode == modeAssign && (hasTLS || h.Headers != nil) {
		// Clients connect to the backends themselves: nothing of these
		// would apply, and a user setting them would think otherwise.
		return errors.New("tls_* and header_up/header_down options apply to proxied connections; in mode assign clients connect to backends directly")
	}
	if h.TLS != nil {
		if h.TLS.HandshakeTimeout != 0 {
			return errors.New("tls handshake_timeout is not supported: handshake_timeout bounds the whole upstream handshake, TLS included")
		}
		if len(h.TLS.ExceptPorts) > 0 {
			return errors.New("tls except_ports is not supported: a backend's scheme (ws:// or wss://) decides whether it uses TLS")
		}
	}
	if hasTLS && h.Consul == nil && len(h.Backends) > 0 && !anyWSS(h.Backends) {
		// Unlike reverse_proxy's transport, TLS options do not turn TLS on:
		// without this, they would be silently unused.
		return errors.New("tls_* options apply to wss:// backends, and no backend is wss://")
	}
	if h.Headers != nil {
		if err := h.Headers.Validate(); err != nil {
			return fmt.Errorf("header operations: %w", err)
		}
	}
	return nil
}

func anyWSS(backends []string) bool {
	for _, s := range backends {
		if u, err := balancer.ParseBackendURL(s); err == nil && u.Scheme == "wss" {
			return true
		}
	}
	return false
}

// headerUp applies the request header operations (header_up) to the
// headers of the upgrade request for backend u.
func (h *Handler) headerUp(r *http.Request, u *balancer.Upstream, hdr http.Header) {
	h.Headers.Request.ApplyTo(hdr, upstreamReplacer(r, u))
}

// headerDown applies the response header operations (header_down) to
// backend u's answer, if it matches their require condition.
func (h *Handler) headerDown(r *http.Request, u *balancer.Upstream, resp *http.Response) {
	ops := h.Headers.Response
	if ops.Require != nil && !ops.Require.Match(resp.StatusCode, resp.Header) {
		return
	}
	ops.ApplyTo(resp.Header, upstreamReplacer(r, u))
}

// upstreamReplacer is the request's replacer, with reverse_proxy's
// upstream placeholders set to backend u, so that `header_up Host
// {upstream_hostport}` means what it does under reverse_proxy.
func upstreamReplacer(r *http.Request, u *balancer.Upstream) *caddy.Replacer {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		repl = caddy.NewReplacer() // not served by Caddy's HTTP app
	}
	repl.Set("http.reverse_proxy.upstream.hostport", u.URL.Host)
	repl.Set("http.reverse_proxy.upstream.host", u.URL.Hostname())
	repl.Set("http.reverse_proxy.upstream.port", u.URL.Port())
	return repl
}
