package caddymodule

import (
	"context"
	"hash/maphash"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

var (
	drainCloses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Subsystem: metricsSubsystem,
		Name:      "balancer_closes_total",
		Help:      "Connections the balancer closed to move their clients (draining, rebalancing), by backend.",
	}, []string{"backend"})
	rejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: metricsNamespace,
		Subsystem: metricsSubsystem,
		Name:      "admission_rejections_total",
		Help:      "Requests refused by an admission check, by reason (origin, upgrade_rate, conns_per_ip).",
	}, []string{"reason"})
)

// ipConns counts relayed connections per client IP over the whole process,
// so that the count survives reloads along with the connections.
var ipConns = newIPCounts()

const ipShards = 64

// ipCounts is a sharded map of counts; entries are deleted at zero, so its
// size follows the connected clients.
type ipCounts struct {
	seed   maphash.Seed
	shards [ipShards]struct {
		mu sync.Mutex
		m  map[string]int
	}
}

func newIPCounts() *ipCounts {
	c := &ipCounts{seed: maphash.MakeSeed()}
	for i := range c.shards {
		c.shards[i].m = make(map[string]int)
	}
	return c
}

// acquire counts one connection for ip unless that would pass limit.
func (c *ipCounts) acquire(ip string, limit int) bool {
	s := &c.shards[maphash.String(c.seed, ip)%ipShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m[ip] >= limit {
		return false
	}
	s.m[ip]++
	return true
}

func (c *ipCounts) release(ip string) {
	s := &c.shards[maphash.String(c.seed, ip)%ipShards]
	s.mu.Lock()
	if s.m[ip] <= 1 {
		delete(s.m, ip)
	} else {
		s.m[ip]--
	}
	s.mu.Unlock()
}

func (c *ipCounts) count(ip string) int {
	s := &c.shards[maphash.String(c.seed, ip)%ipShards]
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[ip]
}

// ipRates holds one token bucket per client IP. Buckets that have refilled
// are dropped by the janitor: a full bucket is the same as a new one.
type ipRates struct {
	limit rate.Limit
	burst int
	mu    sync.Mutex
	m     map[string]*rate.Limiter
}

func newIPRates(limit rate.Limit, burst int) *ipRates {
	return &ipRates{limit: limit, burst: burst, m: make(map[string]*rate.Limiter)}
}

// take spends a token of ip's bucket at now; if none is left it returns how
// long until one is, spending nothing.
func (r *ipRates) take(ip string, now time.Time) time.Duration {
	r.mu.Lock()
	lim := r.m[ip]
	if lim == nil {
		lim = rate.NewLimiter(r.limit, r.burst)
		r.m[ip] = lim
	}
	r.mu.Unlock()
	res := lim.ReserveN(now, 1)
	if !res.OK() {
		return time.Second
	}
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d
	}
	return 0
}

// janitor drops refilled buckets every so often until ctx ends.
func (r *ipRates) janitor(ctx context.Context) {
	every := max(time.Duration(float64(r.burst)/float64(r.limit)*float64(time.Second)), 10*time.Second)
	everyTick(ctx, every, func(now time.Time) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for ip, lim := range r.m {
			if lim.TokensAt(now) >= float64(r.burst) {
				delete(r.m, ip)
			}
		}
	})
}
