package caddymodule

import (
	"math/rand/v2"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func init() {
	caddy.RegisterModule(WSLeastConnSelection{})
}

// WSLeastConnSelection is reverse_proxy's least_conn made global for
// WebSockets: it chooses the available upstream with the fewest connections
// across every balancer, as the backends report them through Consul
// (ws_connections in their service meta, see the consul upstream source and
// the ws_balancer's consul block), plus the requests this instance has sent
// since the report. A WebSocket proxied by reverse_proxy counts as a request
// for its whole life, so that is its connection count.
//
// A backend whose load reaches the capacity it reports (ws_capacity) is
// skipped. When any available upstream has no report (no Consul source
// watches it, or it publishes no count), the policy falls back to plain
// least_conn over this instance's own counts for all of them, rather than
// compare a global count with a local one. Ties are broken at random.
type WSLeastConnSelection struct{}

// CaddyModule returns the Caddy module information.
func (WSLeastConnSelection) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.reverse_proxy.selection_policies.ws_least_conn",
		New: func() caddy.Module { return new(WSLeastConnSelection) },
	}
}

// Select returns the least loaded available upstream, or nil.
func (WSLeastConnSelection) Select(pool reverseproxy.UpstreamPool, _ *http.Request, _ http.ResponseWriter) *reverseproxy.Upstream {
	return selectLeastLoaded(pool, numRequests, func(u *reverseproxy.Upstream) *indexedBackend {
		return consulBackends.lookup(dialAddr(u.Dial))
	})
}

func numRequests(u *reverseproxy.Upstream) int64 { return int64(u.NumRequests()) }

// selectLeastLoaded is Select with the sources of local counts and reports
// as parameters, for tests.
func selectLeastLoaded(pool reverseproxy.UpstreamPool, requests func(*reverseproxy.Upstream) int64, reportOf func(*reverseproxy.Upstream) *indexedBackend) *reverseproxy.Upstream {
	type candidate struct {
		u      *reverseproxy.Upstream
		b      *indexedBackend
		local  int64
		global int64
	}
	cands := make([]candidate, 0, len(pool))
	global := true
	for _, u := range pool {
		if !u.Available() {
			continue
		}
		c := candidate{u: u, local: requests(u)}
		if c.b = reportOf(u); c.b == nil {
			global = false
		} else if load, capacity, ok := c.b.globalLoad(c.local); !ok {
			global = false
		} else if capacity > 0 && load >= capacity {
			continue // full by its own account
		} else {
			c.global = load
		}
		cands = append(cands, c)
	}
	var best *reverseproxy.Upstream
	var bestLoad int64
	ties := 0
	for _, c := range cands {
		load := c.local
		if global {
			load = c.global
		}
		switch {
		case best == nil || load < bestLoad:
			best, bestLoad, ties = c.u, load, 1
		case load == bestLoad:
			// Reservoir sampling: each of the tied is kept with equal
			// probability, whatever the list order.
			ties++
			if rand.IntN(ties) == 0 {
				best = c.u
			}
		}
	}
	return best
}

// globalLoad is the backend's load across all balancers: its Load (the last
// reported count, plus what this process's ws_balancer handlers opened
// since) plus the requests reverse_proxy opened to it since the report was
// first seen here, numRequests being reverse_proxy's count now. ok is false
// when the backend has not reported.
func (e *indexedBackend) globalLoad(numRequests int64) (load, capacity int64, ok bool) {
	_, at, ok := e.Reported()
	if !ok {
		return 0, 0, false
	}
	e.mu.Lock()
	if !at.Equal(e.reportAt) {
		// A new report includes every request made before it; count only
		// those made after. The first selection after the report takes
		// the baseline: nothing was sent to the backend in between.
		e.reportAt, e.baseline = at, numRequests
	}
	since := numRequests - e.baseline
	e.mu.Unlock()
	// since may be negative: connections counted in the report have
	// closed.
	return max(0, e.Load()+since), e.Capacity(), true
}

// dialAddr strips a network prefix ("tcp/") from a dial address.
func dialAddr(dial string) string {
	if i := strings.IndexByte(dial, '/'); i >= 0 {
		return dial[i+1:]
	}
	return dial
}

// UnmarshalCaddyfile sets up the module from Caddyfile tokens. Syntax:
//
//	lb_policy ws_least_conn
func (*WSLeastConnSelection) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume policy name
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ reverseproxy.Selector = (*WSLeastConnSelection)(nil)
	_ caddyfile.Unmarshaler = (*WSLeastConnSelection)(nil)
)
