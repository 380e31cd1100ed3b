package caddymodule

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// Where a handler's backends come from: a static list (backends), or a
// module of reverse_proxy's namespace http.reverse_proxy.upstreams
// (dynamic_backends; the consul block is short for the consul module).
// ws_balancer takes that namespace as it is rather than one of its own, so
// that one Consul module serves reverse_proxy and ws_balancer, Caddy's
// srv, a and multi (and any third-party source) plug in with no wrapper,
// and a `dynamic` block moves between the two directives unchanged.
//
// A module that knows ws_balancer (wsSource: Consul) supplies upstreams
// with their own health and load reports. The others give dial addresses,
// which a background poll maps to upstreams over the shared BackendStore;
// those, like static backends, balance by this instance's live counts and
// may have active health checks.

// wsSource is an upstream source module that supplies ws_balancer's
// upstreams itself, with their health and load reports, instead of the
// dial addresses of GetUpstreams.
type wsSource interface {
	// startWS returns the handler's upstreams, over Backends from store,
	// capped at maxConns, with URLs of the given scheme; stop ends them.
	startWS(ctx caddy.Context, store balancer.BackendStore, maxConns int64, scheme string) (src balancer.UpstreamSource, stop func(), err error)
}

const (
	schemeWS  = "ws"
	schemeWSS = "wss"
)

// provisionSource sets h.source from the configured backends: the static
// list, or the dynamic source module (polled unless it is a wsSource).
// tlsConfig is the upstream TLS config, for active health checks of wss://
// backends.
func (h *Handler) provisionSource(ctx caddy.Context, tlsConfig *tls.Config) error {
	h.dynamicGiven = h.DynamicBackendsRaw != nil
	if h.Consul != nil && h.DynamicBackendsRaw == nil {
		// The short form: the same module as `dynamic consul`.
		h.DynamicBackendsRaw = caddyconfig.JSONModuleObject(h.Consul.ConsulConfig, "source", "consul", nil)
	}
	checks, err := h.provisionHealthChecks(ctx, tlsConfig)
	if err != nil {
		return err
	}
	set := &backendSet{store: h.store, maxConns: h.MaxConns, checks: checks}
	h.sourceStop = set.close
	h.source = &set.pool
	if h.DynamicBackendsRaw == nil {
		urls := make([]*url.URL, 0, len(h.Backends))
		for i, s := range h.Backends {
			u, err := balancer.ParseBackendURL(s)
			if err != nil {
				return err // Caddy calls Cleanup after a failed Provision
			}
			urls = append(urls, u)
			if i < len(h.Weights) {
				if set.weights == nil {
					set.weights = make(map[string]int64)
				}
				if _, dup := set.weights[u.String()]; !dup {
					set.weights[u.String()] = h.Weights[i]
				}
			}
		}
		set.update(urls)
		return nil
	}
	mod, err := ctx.LoadModule(h, "DynamicBackendsRaw")
	if err != nil {
		return fmt.Errorf("loading dynamic backend source: %w", err)
	}
	if ws, ok := mod.(wsSource); ok {
		if checks != nil {
			return errors.New("health_* options apply to static and polled dynamic backends; Consul's backends keep Consul's health checks")
		}
		src, stop, err := ws.startWS(ctx, h.store, h.MaxConns, h.dynamicScheme())
		if err != nil {
			return fmt.Errorf("starting dynamic backend source: %w", err)
		}
		h.source, h.sourceStop = src, stop
		return nil
	}
	p := startPoll(ctx, mod.(reverseproxy.UpstreamSource), set, h.dynamicScheme(), h.logger)
	h.sourceStop = func() {
		p.stop()
		set.close()
	}
	return nil
}

// dynamicScheme is the scheme of dynamic backends, which come as host:port:
// wss when the handler has upstream TLS options (as reverse_proxy's
// transport turns TLS on with them), ws otherwise.
func (h *Handler) dynamicScheme() string {
	if h.TLS != nil || h.TLSInsecureSkipVerify {
		return schemeWSS
	}
	return schemeWS
}

// backendSet holds the upstreams of a static or polled source: their
// Backends from the shared store (so counts survive reloads) and their
// active health checkers, and publishes the current set in a Pool.
type backendSet struct {
	store    balancer.BackendStore
	maxConns int64
	checks   *healthChecks    // nil: no active health checks
	weights  map[string]int64 // static weights by URL; nil: none

	pool balancer.Pool

	mu     sync.Mutex
	held   map[string]*heldUpstream // by URL
	closed bool
}

type heldUpstream struct {
	up      *balancer.Upstream
	checker *healthChecker // nil without active health checks
}

// update publishes the upstreams of urls, keeping those already held and
// releasing those no longer listed. A URL listed twice is one upstream.
func (s *backendSet) update(urls []*url.URL) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	next := make(map[string]*heldUpstream, len(urls))
	list := make([]*balancer.Upstream, 0, len(urls))
	for _, u := range urls {
		key := u.String()
		if next[key] != nil {
			continue
		}
		hu := s.held[key]
		if hu == nil {
			hu = &heldUpstream{up: &balancer.Upstream{
				Backend:  s.store.Acquire(u.Host),
				ID:       u.Host,
				URL:      u,
				MaxConns: s.maxConns,
				Weight:   s.weights[key],
			}}
			if s.checks != nil {
				hu.checker = s.checks.acquire(u)
				hu.up.Active = &hu.checker.health
			}
		}
		next[key] = hu
		list = append(list, hu.up)
	}
	s.pool.Set(list)
	for key, hu := range s.held {
		if next[key] == nil {
			s.release(hu)
		}
	}
	s.held = next
}

func (s *backendSet) release(hu *heldUpstream) {
	s.store.Release(hu.up.Addr())
	if hu.checker != nil {
		hu.checker.release()
	}
}

// close releases every upstream. The last set stays readable, so that
// requests still being served by a configuration that is going away do not
// fail. It is safe to call more than once.
func (s *backendSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, hu := range s.held {
		s.release(hu)
	}
	s.held = nil
}
