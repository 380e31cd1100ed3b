package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler balances WebSocket connections over backends by their live
// connection counts. In proxy mode it takes WebSocket upgrade requests,
// completes the handshake through the least-loaded backend and relays the
// connection; other requests go to the next handler (or get 400 with
// reject_non_websocket).
//
// Unlike reverse_proxy, it counts connections rather than requests, and its
// connections survive config reloads.
type Handler struct {
	// Mode is "proxy" (default): relay connections through Caddy; or
	// "assign": answer each request with a backend's URL and a token, for
	// the client to connect to the backend directly (see AssignConfig).
	Mode string `json:"mode,omitempty"`

	// Assign configures assign mode.
	Assign *AssignConfig `json:"assign,omitempty"`

	// Backends is a static list of backends: host:port, or ws:// / wss://
	// URLs with an optional path prefix joined before the request path.
	Backends []string `json:"backends,omitempty"`

	// Weights are the static backends' weights, one per backend in the
	// order of Backends: least connections compares load ÷ weight, and
	// affinity's bounds and ring are proportional to it. Default: the
	// capacity each backend reports, else equal.
	Weights []int64 `json:"weights,omitempty"`

	// Affinity keeps a key's connections on one backend under a load
	// bound, and sets a sticky cookie (see AffinityConfig).
	Affinity *AffinityConfig `json:"affinity,omitempty"`

	// DynamicBackendsRaw discovers the backends instead, with a module of
	// reverse_proxy's namespace: consul (ours: backends with their load
	// reports and Consul's health), or Caddy's srv, a and multi, whose
	// host:port upstreams are polled every second (the modules cache their
	// lookups for their refresh interval) and dialled as ws://, or wss://
	// when tls options are given. Placeholders in their options must be
	// global ones ({env.*}): they are read in the background, not per
	// request.
	DynamicBackendsRaw json.RawMessage `json:"dynamic_backends,omitempty" caddy:"namespace=http.reverse_proxy.upstreams inline_key=source"`

	// Consul is short for dynamic_backends with source consul: backends
	// and their reported loads from a Consul service.
	Consul *ConsulSource `json:"consul,omitempty"`

	// HealthChecks probes static and polled dynamic backends in the
	// background; one that fails gets no new connections.
	HealthChecks *HealthChecks `json:"health_checks,omitempty"`

	// MaxConns caps the live connections per backend; 0 means no cap.
	// When every backend is full or down the client gets 503 with
	// Retry-After.
	MaxConns int64 `json:"max_conns,omitempty"`

	// FailDuration is how long a backend that refused a dial or failed a
	// handshake gets no new connections. Default 10s.
	FailDuration caddy.Duration `json:"fail_duration,omitempty"`

	// MaxAttempts bounds the backends tried for one upgrade. Default 3.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// DialTimeout bounds a dial to a backend. Default 5s.
	DialTimeout caddy.Duration `json:"dial_timeout,omitempty"`

	// HandshakeTimeout bounds the handshake with a backend after the dial.
	// Default 10s.
	HandshakeTimeout caddy.Duration `json:"handshake_timeout,omitempty"`

	// RetryAfter is the Retry-After sent with 503 answers. Default 5s.
	RetryAfter caddy.Duration `json:"retry_after,omitempty"`

	// RejectNonWebSocket answers requests that are not WebSocket upgrades
	// with 400 instead of passing them to the next handler.
	RejectNonWebSocket bool `json:"reject_non_websocket,omitempty"`

	// TLS configures the connections to wss:// backends: trusted CAs
	// (`ca`), a client certificate, the server name to verify, and
	// insecure_skip_verify (testing only). The fields and their meanings
	// are those of reverse_proxy's HTTP transport `tls`, except
	// handshake_timeout (handshake_timeout above covers TLS) and
	// except_ports (the backend's scheme decides). The config is built
	// once, at provisioning. ws:// backends do not use it.
	TLS *reverseproxy.TLSConfig `json:"tls,omitempty"`

	// Deprecated: use tls.insecure_skip_verify. Turns off certificate
	// checks for wss backends; only for testing.
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`

	// Headers manipulates the headers of the upgrade request sent to a
	// backend (`request`) and of the backend's answer passed to the client
	// (`response`: the 101, and refusals), as reverse_proxy's `headers`
	// does; values take placeholders, and the request's
	// {http.reverse_proxy.upstream.hostport} (also .host, .port) is the
	// backend being tried. They run after hop-by-hop headers are removed
	// and X-Forwarded-* set; hop-by-hop headers cannot be added. Mode
	// proxy only.
	Headers *headers.Handler `json:"headers,omitempty"`

	// OpsConfig holds draining, shutdown, idle, admission and rebalancing
	// options (see ops.go); its fields are at this level in JSON.
	OpsConfig

	// SourceAddresses are local IPs (or CIDR prefixes) to dial backends
	// from, round-robin. One source address holds at most about 64K
	// connections to one backend ip:port; N addresses hold N times that.
	// The addresses must be configured on the host. Default: the kernel's
	// choice.
	SourceAddresses []string `json:"source_addresses,omitempty"`

	logger *zap.Logger
	store  balancer.BackendStore
	// source is what the proxy chooses from (see provisionSource);
	// sourceStop releases it.
	source     balancer.UpstreamSource
	sourceStop func()
	// dynamicGiven records that DynamicBackendsRaw was given (loading
	// the module clears it).
	dynamicGiven bool
	proxy        *balancer.Proxy
	ops          *opsState
	affinity     *balancer.AffinityOptions // nil without affinity
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_balancer",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision sets up the handler. The configuration is checked first, as
// Validate checks it: nothing with an effect beyond this handler (a Consul
// watch, health checkers, the process's file limit, the set of handlers the
// admin API lists) starts for a configuration that Validate would refuse.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.store = usagePoolStore{}
	if h.Mode == "" {
		h.Mode = modeProxy
	}
	if err := h.Validate(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	opts := &balancer.ProxyOptions{
		DialTimeout:      time.Duration(h.DialTimeout),
		HandshakeTimeout: time.Duration(h.HandshakeTimeout),
		FailDuration:     time.Duration(h.FailDuration),
		MaxAttempts:      h.MaxAttempts,
		RetryAfter:       time.Duration(h.RetryAfter),
		Logger:           h.logger,
		OnOutcome:        countUpgrade,
	}
	var err error
	if opts.Affinity, err = h.provisionAffinity(ctx); err != nil {
		return err
	}
	if err := h.provisionUpstream(ctx, opts); err != nil {
		return err
	}
	if err := h.provisionSource(ctx, opts.TLSConfig); err != nil {
		return err // Caddy calls Cleanup after a failed Provision
	}
	if len(h.SourceAddresses) > 0 {
		dialer, err := newSourceDialer(h.SourceAddresses, time.Duration(h.DialTimeout))
		if err != nil {
			return err
		}
		opts.Dialer = dialer
	}
	raiseFileLimit(h.logger)
	h.proxy = balancer.NewProxy(h.source, h.store, opts)
	if h.Mode == modeAssign {
		if err := h.provisionAssign(); err != nil {
			return err
		}
	}
	h.provisionOps(ctx)
	handlers.add(h)
	return nil
}

const modeProxy = "proxy"

// Validate checks the configuration. It only reads it, so Provision runs it
// before anything else too.
func (h *Handler) Validate() error {
	switch {
	case h.Mode == modeAssign:
		if err := h.Assign.check(); err != nil {
			return err
		}
	case h.Mode != modeProxy:
		return fmt.Errorf("unknown mode %q (want %q or %q)", h.Mode, modeProxy, modeAssign)
	case h.Assign != nil:
		return errors.New("assign options (token_key, ...) need mode assign")
	}
	sources := 0
	for _, given := range []bool{len(h.Backends) > 0, h.dynamicGiven || h.DynamicBackendsRaw != nil, h.Consul != nil} {
		if given {
			sources++
		}
	}
	switch {
	case sources == 0:
		return errors.New("no backends configured: give backends, a dynamic source or a consul block")
	case sources > 1:
		return errors.New("give one of static backends, a dynamic source or a consul block, not several")
	}
	if err := h.validateUpstream(); err != nil {
		return err
	}
	if err := h.validateAffinity(); err != nil {
		return err
	}
	if err := h.OpsConfig.validate(); err != nil {
		return err
	}
	if h.MaxConns < 0 {
		return fmt.Errorf("max_conns must not be negative, got %d", h.MaxConns)
	}
	if h.MaxAttempts < 0 {
		return fmt.Errorf("max_attempts must not be negative, got %d", h.MaxAttempts)
	}
	for name, d := range map[string]caddy.Duration{
		"fail_duration": h.FailDuration, "dial_timeout": h.DialTimeout,
		"handshake_timeout": h.HandshakeTimeout, "retry_after": h.RetryAfter,
	} {
		if d < 0 {
			return fmt.Errorf("%s must not be negative, got %s", name, time.Duration(d))
		}
	}
	return nil
}

// Cleanup releases this handler's hold on backend state. Connections it
// opened are not closed: they hold their own references and carry on under
// the next config.
func (h *Handler) Cleanup() error {
	handlers.remove(h)
	h.cleanupOps()
	if h.sourceStop != nil {
		h.sourceStop()
		h.sourceStop = nil
	}
	return nil
}

// ServeHTTP proxies WebSocket upgrades and passes other requests on; in
// assign mode it answers every request with an assignment.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.Mode == modeAssign {
		if err := h.admit(w, r); err != nil {
			return err
		}
		return h.serveAssign(w, r)
	}
	if !protocol.IsUpgrade(r) && !balancer.IsExtendedConnect(r) {
		if h.RejectNonWebSocket {
			return caddyhttp.Error(http.StatusBadRequest, errors.New("not a WebSocket upgrade request"))
		}
		return next.ServeHTTP(w, r)
	}
	return h.serveUpgrade(w, r)
}

// handlerError turns a *balancer.Error into Caddy's HTTP error, with the
// headers it carries.
func handlerError(w http.ResponseWriter, err error) error {
	var e *balancer.Error
	if errors.As(err, &e) {
		for name, values := range e.Header {
			w.Header()[name] = values
		}
		return caddyhttp.Error(e.Status, e)
	}
	return err
}

// forwardedFor takes the client's IP as Caddy determined it, honouring the
// server's trusted_proxies.
func forwardedFor(r *http.Request) balancer.ForwardedFor {
	trusted, _ := caddyhttp.GetVar(r.Context(), caddyhttp.TrustedProxyVarKey).(bool)
	return balancer.ForwardedFor{ClientIP: clientIP(r), Trusted: trusted}
}

// handlerSet tracks the provisioned handlers, for the admin API.
type handlerSet struct {
	mu sync.Mutex
	m  map[*Handler]struct{}
}

var handlers = handlerSet{m: make(map[*Handler]struct{})}

func (s *handlerSet) add(h *Handler) {
	s.mu.Lock()
	s.m[h] = struct{}{}
	s.mu.Unlock()
}

func (s *handlerSet) remove(h *Handler) {
	s.mu.Lock()
	delete(s.m, h)
	s.mu.Unlock()
}

func (s *handlerSet) each(f func(*Handler)) {
	s.mu.Lock()
	list := make([]*Handler, 0, len(s.m))
	for h := range s.m {
		list = append(list, h)
	}
	s.mu.Unlock()
	for _, h := range list {
		f(h)
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
