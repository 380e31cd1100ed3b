package balancer

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"
)

// Upstream is one backend as a handler sees it: where to dial, where assign
// mode sends clients and what limits apply, over the shared Backend state.
// Upstreams are immutable once published in a Pool; a change produces a new
// Upstream over the same Backend.
type Upstream struct {
	*Backend

	// ID identifies the backend: the Consul service ID for discovered
	// backends, the address for static ones. Tokens are bound to it.
	ID string
	// URL is what the balancer dials: scheme ws or wss, host:port, and an
	// optional path prefix joined before the request's path.
	URL *url.URL
	// PublicURL is where assign mode sends clients; empty means URL.
	PublicURL string
	// MaxConns caps the backend's load; 0 means no cap beyond any capacity
	// the backend reports itself.
	MaxConns int64
	// Weight is the backend's static weight: least connections compares
	// load ÷ weight, and affinity's bound and ring are proportional to it.
	// 0 means none given: the capacity the backend reports stands in, and
	// without that the weight is unknown (the mean of the known ones).
	Weight int64
	// DrainAnnounced is the backend's own word, through discovery, that it
	// is draining: it keeps its connections but gets no new ones (see
	// Draining).
	DrainAnnounced bool
	// Active, if set, is the verdict of the active health checks run on
	// the backend for this upstream's handler; nil means none run.
	Active *ActiveHealth
}

// Healthy reports whether the upstream may be tried: its backend is not
// resting after a failed dial or handshake (passive health), and it passes
// its active health checks, if any.
func (u *Upstream) Healthy(now time.Time) bool {
	return u.Backend.Healthy(now) && u.Active.Up()
}

// ActiveHealth is the verdict of an active health check on a backend: set
// by the checker, read at every selection. The zero value is healthy, and
// so is a nil *ActiveHealth. It must not be copied.
type ActiveHealth struct{ down atomic.Bool }

// Up reports whether the last verdict was healthy.
func (h *ActiveHealth) Up() bool { return h == nil || !h.down.Load() }

// Set records a verdict and reports whether it changed.
func (h *ActiveHealth) Set(up bool) (changed bool) { return h.down.Swap(!up) == up }

// Limit is the effective cap on the backend's load: the lower of MaxConns
// and the capacity it reported, 0 meaning none.
func (u *Upstream) Limit() int64 {
	limit := u.MaxConns
	if c := u.Capacity(); c > 0 && (limit == 0 || c < limit) {
		limit = c
	}
	return limit
}

// Full reports whether the backend is at its limit.
func (u *Upstream) Full() bool {
	limit := u.Limit()
	return limit > 0 && u.Load() >= limit
}

// Available reports whether the upstream may take a new connection at now.
func (u *Upstream) Available(now time.Time) bool {
	_, ok := u.availableLoad(now)
	return ok
}

// availableLoad is Available, with the load it read to decide, so that a
// selection reads each backend's load once.
func (u *Upstream) availableLoad(now time.Time) (load int64, ok bool) {
	if u.Draining() || !u.Healthy(now) {
		return 0, false
	}
	load = u.Load()
	limit := u.Limit()
	return load, limit <= 0 || load < limit
}

// weight is the weight selection uses: the static Weight, else the
// reported capacity, else 0 (unknown).
func (u *Upstream) weight() int64 {
	if u.Weight > 0 {
		return u.Weight
	}
	return max(u.Capacity(), 0)
}

// State is a one-word summary for the admin API and logs.
func (u *Upstream) State(now time.Time) string {
	switch {
	case u.Draining():
		return "draining"
	case !u.Healthy(now):
		return "down"
	case u.Full():
		return "full"
	}
	return "up"
}

// UpstreamSource supplies the upstreams a handler chooses from. It is called
// on every upgrade, so it must be cheap and safe for concurrent use.
type UpstreamSource interface {
	Upstreams() []*Upstream
}

// Pool is an UpstreamSource whose set is replaced as a whole by whatever
// discovers backends (a static list once, Consul on every change). Readers
// never block writers and always see a consistent set.
type Pool struct {
	set atomic.Pointer[[]*Upstream]
}

// Upstreams returns the current set; callers must not modify it.
func (p *Pool) Upstreams() []*Upstream {
	if s := p.set.Load(); s != nil {
		return *s
	}
	return nil
}

// Set publishes a new set.
func (p *Pool) Set(ups []*Upstream) { p.set.Store(&ups) }

// ParseBackendURL parses a backend as written in a config: host:port,
// ws://host:port/path or wss://host/path (port 80 and 443 implied). http and
// https are accepted as synonyms of ws and wss.
func ParseBackendURL(s string) (*url.URL, error) {
	raw := s
	if !strings.Contains(raw, "://") {
		raw = "ws://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("parsing backend %q: %w", s, err)
	}
	switch u.Scheme {
	case "ws", "http":
		u.Scheme = "ws"
	case "wss", "https":
		u.Scheme = "wss"
	default:
		return nil, fmt.Errorf("backend %q: scheme %q is not ws or wss", s, u.Scheme)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("backend %q: missing host", s)
	}
	if u.User != nil || u.Fragment != "" {
		return nil, fmt.Errorf("backend %q: user info and fragments are not allowed", s)
	}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "wss" {
			port = "443"
		}
		u.Host = net.JoinHostPort(u.Hostname(), port)
	} else if _, err := parsePort(u.Port()); err != nil {
		return nil, fmt.Errorf("backend %q: %w", s, err)
	}
	return u, nil
}

func parsePort(p string) (int, error) {
	n := 0
	for _, c := range p {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("invalid port %q", p)
		}
		n = n*10 + int(c-'0')
		if n > 65535 {
			return 0, fmt.Errorf("port %q out of range", p)
		}
	}
	if n == 0 {
		return 0, fmt.Errorf("invalid port %q", p)
	}
	return n, nil
}
