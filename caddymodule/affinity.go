package caddymodule

import (
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"net/http"
	"sync"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/affinity"
	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// AffinityConfig sends the connections of one key (a chat room, a match, a
// tenant) to one backend while it is below its load bound, spilling the rest
// along a consistent-hash ring that every balancer instance builds alike;
// and, with Cookie, brings a reconnecting client back to its backend. In
// proxy and assign modes. docs/affinity.md explains the algorithm, what the
// bound guarantees and how to choose balance_factor.
type AffinityConfig struct {
	// Key is the key of a request: any placeholder, replaced per request,
	// such as {http.request.uri.query.room} ({query.room} in a
	// Caddyfile), {http.request.header.X-Room}, {http.request.cookie.room},
	// {http.request.uri.path.1} or {http.auth.user.id}. A key that comes out
	// empty, or no key, means least connections for the request.
	Key string `json:"key,omitempty"`

	// BalanceFactor is c: a backend takes a key's new connection only while
	// its load is below ⌈c · (total + 1) · wᵢ / Σw⌉, c times its share.
	// Must be above 1. Default 1.25.
	BalanceFactor float64 `json:"balance_factor,omitempty"`

	// Cookie names the sticky cookie: the 101 answer (or the /assign
	// answer) sets it to an opaque value naming the chosen backend (no
	// address, no ID; Path=/, HttpOnly, SameSite=Lax, Secure over HTTPS,
	// for the browser session), and a request carrying a valid one goes
	// back to that backend if it is up, not draining, not full and below
	// its bound. Forged and stale values are ignored. Default: none.
	Cookie string `json:"cookie,omitempty"`

	// CookieSecret is the key of the cookie values, at least 16 bytes,
	// usually a placeholder such as {env.WSB_COOKIE_SECRET}: every instance
	// given the same secret honours the others' cookies. Default: a random
	// secret per process, kept across config reloads; cookies then bring a
	// client back only through the instance that set them (through another,
	// normal selection applies), and not after a restart.
	CookieSecret string `json:"cookie_secret,omitempty"`
}

// processCookieSecret is the cookie secret of handlers that give none:
// random, made once per process so that config reloads keep it.
var processCookieSecret = sync.OnceValue(func() []byte {
	b := make([]byte, 32)
	rand.Read(b) // never fails (crypto/rand panics rather)
	return b
})

// check validates the configuration; it is pure, for Validate.
func (c *AffinityConfig) check(rebalance *RebalanceConfig) error {
	if c.Key == "" && c.Cookie == "" {
		return errors.New("affinity needs a key, a cookie, or both")
	}
	if err := (affinity.Options{BalanceFactor: c.BalanceFactor}).Validate(); err != nil {
		return fmt.Errorf("affinity: %w", err)
	}
	if c.Cookie != "" && (&http.Cookie{Name: c.Cookie, Value: "x"}).Valid() != nil {
		return fmt.Errorf("affinity cookie: %q is not a valid cookie name", c.Cookie)
	}
	if c.CookieSecret != "" && c.Cookie == "" {
		return errors.New("affinity cookie_secret needs a cookie")
	}
	if c.Key != "" && rebalance != nil && rebalance.Ratio != 0 && rebalance.Ratio < c.factor() {
		// The bound lets a backend reach c times the average: rebalance
		// would close what affinity just placed, and the clients would
		// reconnect to the same backends.
		return fmt.Errorf("rebalance ratio %v is below the affinity balance_factor %v: it would close the connections affinity places; give a ratio of at least %v, or none (then %v)",
			rebalance.Ratio, c.factor(), c.factor(), c.rebalanceRatio())
	}
	return nil
}

func (c *AffinityConfig) factor() float64 {
	if c.BalanceFactor == 0 {
		return affinity.DefaultBalanceFactor
	}
	return c.BalanceFactor
}

// rebalanceRatio is rebalance's default ratio under affinity: 10% above the
// balance factor, as the bound is a ceiling over the total plus one and
// counts lag (docs/affinity.md), and at least rebalance's own default.
// Rounded to 3 decimals, so that errors and logs say 1.65, not
// 1.6500000000000001.
func (c *AffinityConfig) rebalanceRatio() float64 {
	return max(defaultRebalanceRatio, math.Round(c.factor()*1.1*1000)/1000)
}

// defaultRebalanceRatio is RebalanceConfig.Ratio's default.
const defaultRebalanceRatio = 1.2

// provisionAffinity returns the core's affinity options, or nil without
// affinity; it raises rebalance's default ratio above the balance factor.
func (h *Handler) provisionAffinity(ctx caddy.Context) (*balancer.AffinityOptions, error) {
	c := h.Affinity
	if c == nil {
		return nil, nil
	}
	if err := c.check(h.Rebalance); err != nil {
		return nil, err
	}
	if h.Rebalance != nil && h.Rebalance.Ratio == 0 && c.Key != "" {
		h.Rebalance.Ratio = c.rebalanceRatio()
	}
	o := &balancer.AffinityOptions{
		BalanceFactor: c.BalanceFactor,
		CookieName:    c.Cookie,
		OnChoice:      countAffinity,
	}
	if key := c.Key; key != "" {
		o.Key = func(r *http.Request) string {
			repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
			if repl == nil {
				return ""
			}
			return repl.ReplaceAll(key, "")
		}
	}
	if c.Cookie != "" {
		if c.CookieSecret == "" {
			o.CookieKey = processCookieSecret()
			h.logger.Info("affinity cookie without cookie_secret: a random secret of this process signs it, so only this instance honours it until restarted; give every instance the same cookie_secret to share cookies",
				zap.String("cookie", c.Cookie))
		} else {
			secret, err := caddy.NewReplacer().ReplaceOrErr(c.CookieSecret, true, true)
			if err != nil {
				return nil, fmt.Errorf("affinity cookie_secret: %w", err)
			}
			if len(secret) < affinity.MinCookieKeyLen {
				return nil, fmt.Errorf("affinity cookie_secret: %d bytes, want at least %d", len(secret), affinity.MinCookieKeyLen)
			}
			o.CookieKey = []byte(secret)
		}
	}
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("affinity: %w", err)
	}
	h.affinity = o
	return o, nil
}

// validateAffinity checks the affinity and static weight options.
func (h *Handler) validateAffinity() error {
	if len(h.Weights) > 0 {
		if len(h.Weights) != len(h.Backends) {
			return fmt.Errorf("weights: %d weights for %d static backends; give one per backend, in the same order", len(h.Weights), len(h.Backends))
		}
		for _, w := range h.Weights {
			if w < 1 {
				return fmt.Errorf("weights: %d is not a positive integer", w)
			}
		}
	}
	if h.Affinity == nil {
		return nil
	}
	return h.Affinity.check(h.Rebalance)
}

// affinityChoices counts the connections (proxy mode) and assignments
// placed by affinity.
var affinityChoices = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metricsNamespace,
	Subsystem: metricsSubsystem,
	Name:      "affinity_choices_total",
	Help:      "Connections (proxy mode) or assignments placed by affinity, by backend and outcome: main (the key's main backend), spill (further along the ring: the main one was at its bound), cookie (back to the backend the sticky cookie names).",
}, []string{"backend", "outcome"})

func countAffinity(backend, outcome string) { affinityChoices.WithLabelValues(backend, outcome).Inc() }
