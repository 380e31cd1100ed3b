package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// RebalanceConfig moves connections off overloaded backends: when the most
// loaded backend carries more than Ratio times the average load for longer
// than After, connections on the most loaded backends are closed with close
// code 1012 (Service Restart) at no more than Rate per second until the
// spread is within Ratio again. Their clients reconnect, and new connections
// go to the least loaded backends. Only connections relayed by this
// instance (proxy mode) can be closed.
type RebalanceConfig struct {
	// Ratio is the highest tolerated max/average load. Default 1.2; must be
	// above 1.
	Ratio float64 `json:"ratio,omitempty"`
	// After is how long the spread must exceed Ratio before connections are
	// closed, so that a passing imbalance (a backend that just joined and
	// fills with new connections) is not acted on. Default 30s.
	After caddy.Duration `json:"after,omitempty"`
	// Rate is the most connections closed per second. Default 10.
	Rate float64 `json:"rate,omitempty"`
}

func (c *RebalanceConfig) validate() error {
	switch {
	case c.Ratio != 0 && c.Ratio <= 1:
		return fmt.Errorf("rebalance ratio must be above 1, got %v", c.Ratio)
	case c.After < 0:
		return errors.New("rebalance after must not be negative")
	case c.Rate < 0:
		return errors.New("rebalance rate must not be negative")
	}
	return nil
}

type rebalancer struct {
	ratio  float64
	after  time.Duration
	lim    *rate.Limiter
	logger *zap.Logger
	now    func() time.Time

	// over is when the spread was first seen over ratio; zero when within.
	over time.Time
}

func newRebalancer(c *RebalanceConfig, logger *zap.Logger) *rebalancer {
	rb := &rebalancer{ratio: c.Ratio, after: time.Duration(c.After), logger: logger, now: time.Now}
	if rb.ratio == 0 {
		rb.ratio = 1.2 // tolerate normal jitter of least-conn spreading
	}
	if c.After == 0 {
		rb.after = 30 * time.Second // long enough for a new backend to fill with new arrivals
	}
	r := c.Rate
	if r == 0 {
		r = 10 // gentle enough that reconnecting clients do not stampede
	}
	rb.lim = rate.NewLimiter(rate.Limit(r), 1)
	return rb
}

// pickVictim returns the most loaded backend while the spread over the
// backends that can take connections exceeds ratio, or nil. The caller
// closes what it can there (this instance's connections).
func (rb *rebalancer) pickVictim(ups []*balancer.Upstream, now time.Time) *balancer.Upstream {
	var sum int64
	var n int
	var top *balancer.Upstream
	var topLoad int64
	for _, u := range ups {
		if u.Draining() || !u.Healthy(now) {
			continue // draining has its own closing; down ones carry nothing new
		}
		l := u.Load()
		sum += l
		n++
		if top == nil || l > topLoad {
			top, topLoad = u, l
		}
	}
	if n < 2 || sum == 0 {
		return nil
	}
	avg := float64(sum) / float64(n)
	if float64(topLoad) <= rb.ratio*avg {
		return nil
	}
	return top
}

func (rb *rebalancer) run(ctx context.Context, src balancer.UpstreamSource) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		now := rb.now()
		victim := rb.pickVictim(src.Upstreams(), now)
		switch {
		case victim == nil || victim.Live() == 0:
			rb.over = time.Time{}
		case rb.over.IsZero():
			rb.over = now
			rb.logger.Info("backend load spread over rebalance ratio", zap.String("backend", victim.Addr()),
				zap.Float64("ratio", rb.ratio), zap.Duration("after", rb.after))
		case now.Sub(rb.over) >= rb.after:
			if rb.lim.Wait(ctx) != nil {
				return
			}
			// Look again: the spread may have settled while waiting.
			if v := rb.pickVictim(src.Upstreams(), rb.now()); v != nil &&
				v.CloseConnections(protocol.CloseServiceRestart, "rebalancing", 1) > 0 {
				drainCloses.WithLabelValues(v.Addr()).Inc()
			}
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
