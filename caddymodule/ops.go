package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// OpsConfig holds the operational options of a ws_balancer handler:
// draining, graceful shutdown, idle connections, admission limits and
// rebalancing. Its fields appear at the top level of the handler's JSON.
type OpsConfig struct {
	// DrainCloseRate is how many connections per second are closed, with
	// close code 1012 (Service Restart), on backends that are draining
	// (ws_draining=true in their Consul meta, or drained through the admin
	// API), so that their clients reconnect elsewhere. 0 (default) leaves
	// those connections to end on their own; draining backends get no new
	// connections either way.
	DrainCloseRate float64 `json:"drain_close_rate,omitempty"`

	// ShutdownGrace is how long relayed connections are kept when Caddy
	// exits (not on a config reload, which keeps them), counted from the
	// moment Caddy stops accepting requests. They are then closed with close
	// code 1001 (Going Away). Default 0: closed at once.
	ShutdownGrace caddy.Duration `json:"shutdown_grace,omitempty"`

	// IdleTimeout closes, with close code 1001, a relayed connection that
	// carried no byte either way for this long. Pings count as traffic.
	// Default 0: no idle timeout.
	IdleTimeout caddy.Duration `json:"idle_timeout,omitempty"`

	// Origins, if set, is the allow-list of Origin headers: full origins
	// ("https://app.example.com") or host patterns ("*.example.com"),
	// matched case-insensitively with path.Match ("*" spans dots, so
	// "*.example.com" matches every subdomain depth); "*" alone allows any.
	// A request carrying an Origin that matches none gets 403. Requests
	// without an Origin (non-browser clients) are allowed: the check protects
	// browsers from cross-site WebSocket hijacking, it is not authentication.
	Origins []string `json:"origins,omitempty"`

	// MaxConnsPerIP caps the concurrent relayed connections per client IP
	// (as Caddy determines it, honouring the server's trusted_proxies);
	// upgrades over it get 429. The count covers every ws_balancer handler
	// of the process and survives reloads. Default 0: no cap.
	MaxConnsPerIP int `json:"max_conns_per_ip,omitempty"`

	// UpgradeRate limits upgrades (and assignments) per client IP per
	// second; requests over it get 429 with Retry-After. Default 0: no
	// limit.
	UpgradeRate float64 `json:"upgrade_rate,omitempty"`

	// UpgradeBurst is how many upgrades a client IP may make at once before
	// UpgradeRate applies. Default: UpgradeRate rounded up, at least 1.
	UpgradeBurst int `json:"upgrade_burst,omitempty"`

	// Rebalance, if set, closes connections on overloaded backends so that
	// their clients reconnect to less loaded ones. Off by default.
	Rebalance *RebalanceConfig `json:"rebalance,omitempty"`
}

// opsState is the runtime state behind OpsConfig, one per handler.
type opsState struct {
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	limits  *ipRates
	origins []string
}

func (c *OpsConfig) validate() error {
	switch {
	case c.DrainCloseRate < 0:
		return fmt.Errorf("drain_close_rate must not be negative, got %v", c.DrainCloseRate)
	case c.ShutdownGrace < 0:
		return fmt.Errorf("shutdown_grace must not be negative, got %s", time.Duration(c.ShutdownGrace))
	case c.IdleTimeout < 0:
		return fmt.Errorf("idle_timeout must not be negative, got %s", time.Duration(c.IdleTimeout))
	case c.MaxConnsPerIP < 0:
		return fmt.Errorf("max_conns_per_ip must not be negative, got %d", c.MaxConnsPerIP)
	case c.UpgradeRate < 0:
		return fmt.Errorf("upgrade_rate must not be negative, got %v", c.UpgradeRate)
	case c.UpgradeBurst < 0:
		return fmt.Errorf("upgrade_burst must not be negative, got %d", c.UpgradeBurst)
	case c.UpgradeBurst > 0 && c.UpgradeRate == 0:
		return errors.New("upgrade_burst needs upgrade_rate")
	}
	for _, o := range c.Origins {
		if _, err := path.Match(strings.ToLower(o), ""); err != nil {
			return fmt.Errorf("origins: bad pattern %q: %w", o, err)
		}
	}
	if c.Rebalance != nil {
		return c.Rebalance.validate()
	}
	return nil
}

// provisionOps starts the handler's background workers: they stop when the
// handler's context ends (config unload).
func (h *Handler) provisionOps(ctx caddy.Context) {
	wctx, cancel := context.WithCancel(ctx)
	h.ops = &opsState{cancel: cancel}
	for _, o := range h.Origins {
		h.ops.origins = append(h.ops.origins, strings.ToLower(o))
	}
	if h.UpgradeRate > 0 {
		burst := h.UpgradeBurst
		if burst == 0 {
			burst = max(1, int(h.UpgradeRate+0.999))
		}
		h.ops.limits = newIPRates(rate.Limit(h.UpgradeRate), burst)
		h.goWorker(wctx, h.ops.limits.janitor)
	}
	if h.Mode == modeAssign {
		return // no relayed connections to close
	}
	if h.DrainCloseRate > 0 {
		h.goWorker(wctx, h.drainLoop)
	}
	if h.IdleTimeout > 0 {
		h.goWorker(wctx, h.idleLoop)
	}
	if h.Rebalance != nil {
		rb := newRebalancer(h.Rebalance, h.logger)
		h.goWorker(wctx, func(ctx context.Context) { rb.run(ctx, h.source) })
	}
}

func (h *Handler) goWorker(ctx context.Context, f func(context.Context)) {
	h.ops.wg.Add(1)
	go func() {
		defer h.ops.wg.Done()
		f(ctx)
	}()
}

// cleanupOps stops the workers and, when the process is exiting rather than
// reloading, records the handler's shutdown_grace for the exit hook (the
// first handler cleaned up decides the grace). Cleanup does not wait out
// the grace itself: Caddy runs the exit hook after unloading the config.
func (h *Handler) cleanupOps() {
	if h.ops != nil {
		h.ops.cancel()
		h.ops.wg.Wait()
	}
	if caddy.Exiting() {
		exitGrace.set(time.Duration(h.ShutdownGrace), h.logger)
	}
}

// exitGrace is the shutdown_grace of the first handler cleaned up while
// Caddy exits, with its logger.
var exitGrace exitGraceState

type exitGraceState struct {
	once   sync.Once
	grace  time.Duration
	logger *zap.Logger
}

// set records the grace, if none was recorded yet.
func (e *exitGraceState) set(grace time.Duration, logger *zap.Logger) {
	e.once.Do(func() { e.grace, e.logger = grace, logger })
}

// get returns the recorded grace (0 and no logger when no handler was
// cleaned up while exiting); nothing can be recorded after it.
func (e *exitGraceState) get() (time.Duration, *zap.Logger) {
	e.once.Do(func() {})
	return e.grace, e.logger
}

func init() {
	// Caddy calls its exit hooks after stopping its apps and unloading
	// the config, so every handler's Cleanup has recorded its grace by
	// then, and connections that outlived every handler (a reload removed
	// them all) are closed too.
	caddy.OnExit(closeAllOnExit)
}

// closeAllOnExit closes every connection relayed to any backend (whatever
// config opened it) with 1001 Going Away, after the recorded grace or when
// ctx ends, whichever comes first. The HTTP servers have stopped accepting
// by then: Caddy stops its apps before unloading their config.
func closeAllOnExit(ctx context.Context) {
	grace, logger := exitGrace.get()
	if grace > 0 {
		t := time.NewTimer(grace)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	// Collect first: closing a connection releases its backend in
	// backendStates, which must not happen inside Range.
	var all []backendEntry
	backendStates.Range(func(_, value any) bool {
		all = append(all, value.(backendEntry))
		return true
	})
	closed := 0
	for _, b := range all {
		closed += b.CloseConnections(protocol.CloseGoingAway, "server shutting down", 0)
	}
	if logger != nil {
		logger.Info("closed WebSocket connections on exit", zap.Int("connections", closed), zap.Duration("grace", grace))
	}
}

// drainLoop closes connections of draining backends at DrainCloseRate with
// 1012 Service Restart, one at a time, taking the draining backends in turn.
func (h *Handler) drainLoop(ctx context.Context) {
	lim := rate.NewLimiter(rate.Limit(h.DrainCloseRate), 1)
	idle := time.NewTicker(100 * time.Millisecond)
	defer idle.Stop()
	turn := 0
	for {
		var draining []*balancer.Upstream
		for _, u := range h.source.Upstreams() {
			if u.Draining() && u.Live() > 0 {
				draining = append(draining, u)
			}
		}
		if len(draining) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-idle.C:
			}
			continue
		}
		if lim.Wait(ctx) != nil {
			return
		}
		turn++
		u := draining[turn%len(draining)]
		if u.CloseConnections(protocol.CloseServiceRestart, "backend draining", 1) > 0 {
			drainCloses.WithLabelValues(u.Addr()).Inc()
		}
	}
}

// idleLoop closes idle connections of the handler's backends. One ticker
// serves every connection: each relay only stamps its last activity.
func (h *Handler) idleLoop(ctx context.Context) {
	timeout := time.Duration(h.IdleTimeout)
	every := min(max(timeout/4, 50*time.Millisecond), time.Second)
	everyTick(ctx, every, func(now time.Time) {
		for _, u := range h.source.Upstreams() {
			u.CloseIdle(protocol.CloseGoingAway, "idle timeout", now.Add(-timeout))
		}
	})
}

// everyTick calls f every d until ctx ends: the shape of the handler's
// background workers.
func everyTick(ctx context.Context, d time.Duration, f func(now time.Time)) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			f(now)
		}
	}
}

// admit applies the admission checks (origin, upgrade rate) to a request
// about to be proxied or assigned.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request) error {
	if h.ops == nil {
		return nil
	}
	if len(h.ops.origins) > 0 {
		if o := r.Header.Get("Origin"); o != "" && !originAllowed(h.ops.origins, o) {
			rejections.WithLabelValues("origin").Inc()
			return caddyhttp.Error(http.StatusForbidden, fmt.Errorf("origin %q not allowed", o))
		}
	}
	if h.ops.limits != nil {
		if wait := h.ops.limits.take(clientIP(r), time.Now()); wait > 0 {
			rejections.WithLabelValues("upgrade_rate").Inc()
			w.Header().Set("Retry-After", balancer.RetryAfterSeconds(wait))
			return caddyhttp.Error(http.StatusTooManyRequests, fmt.Errorf("upgrade rate exceeded for client %s", clientIP(r)))
		}
	}
	return nil
}

// serveUpgrade proxies an upgrade after the admission checks, holding a
// slot of the client IP's connection count for the life of the relay.
func (h *Handler) serveUpgrade(w http.ResponseWriter, r *http.Request) error {
	if err := h.admit(w, r); err != nil {
		return err
	}
	if h.MaxConnsPerIP <= 0 {
		return handlerError(w, h.proxy.ServeUpgrade(w, r, forwardedFor(r), nil))
	}
	ip := clientIP(r)
	if !ipConns.acquire(ip, h.MaxConnsPerIP) {
		rejections.WithLabelValues("conns_per_ip").Inc()
		w.Header().Set("Retry-After", "1")
		return caddyhttp.Error(http.StatusTooManyRequests, fmt.Errorf("client %s is at max_conns_per_ip %d", ip, h.MaxConnsPerIP))
	}
	hook := balancer.NewRelayHook(func() { ipConns.release(ip) })
	err := h.proxy.ServeUpgrade(w, r, forwardedFor(r), hook)
	if !hook.Adopted() {
		ipConns.release(ip)
	}
	return handlerError(w, err)
}

// clientIP is the client's IP as Caddy determined it (honouring the
// server's trusted_proxies), else the connection's remote address.
func clientIP(r *http.Request) string {
	if ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ip != "" {
		return ip
	}
	host := r.RemoteAddr
	if i := strings.LastIndexByte(host, ':'); i >= 0 {
		host = host[:i]
	}
	return strings.Trim(host, "[]")
}

// originAllowed matches origin against lower-cased patterns: with a scheme
// against the whole origin, without one against its host (and port).
func originAllowed(patterns []string, origin string) bool {
	origin = strings.ToLower(origin)
	host := origin
	if i := strings.Index(origin, "://"); i >= 0 {
		host = origin[i+3:]
	}
	for _, p := range patterns {
		target := host
		if strings.Contains(p, "://") {
			target = origin
		}
		if p == "*" {
			return true
		}
		if ok, _ := path.Match(p, target); ok {
			return true
		}
	}
	return false
}
