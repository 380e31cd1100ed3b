package caddymodule

import (
	"context"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

const (
	// pollInterval is how often a dynamic source is asked for its
	// upstreams. The modules cache their lookups (srv and a for their
	// refresh interval, 1m by default), so most polls read memory; a
	// change is seen within a second of the module's own refresh.
	pollInterval = time.Second
	// pollTimeout bounds one poll, the module's lookup included.
	pollTimeout = 10 * time.Second
)

// poll keeps a backendSet in step with a dynamic upstream source module
// (srv, a, multi, ...), as reverse_proxy consults it: through its
// GetUpstreams. reverse_proxy does so per request; ws_balancer does so in
// the background, so that the set is known between requests (for active
// health checks, the admin API and rebalancing), which means the module's
// options may use global placeholders ({env.*}) but not request ones.
type poll struct {
	mod    reverseproxy.UpstreamSource
	set    *backendSet
	scheme string
	logger *zap.Logger

	cancel  context.CancelFunc
	done    chan struct{}
	failing bool // an error is being logged; only the poll goroutine uses it
}

// startPoll polls mod once, so that the handler starts with its backends,
// then every pollInterval until ctx ends or stop is called.
func startPoll(ctx caddy.Context, mod reverseproxy.UpstreamSource, set *backendSet, scheme string, logger *zap.Logger) *poll {
	pctx, cancel := context.WithCancel(ctx)
	p := &poll{mod: mod, set: set, scheme: scheme, logger: logger.Named("dynamic"), cancel: cancel, done: make(chan struct{})}
	p.refresh(pctx)
	go p.run(pctx)
	return p
}

func (p *poll) run(ctx context.Context) {
	defer close(p.done)
	everyTick(ctx, pollInterval, func(time.Time) { p.refresh(ctx) })
}

// stop ends the polling and waits for it.
func (p *poll) stop() {
	p.cancel()
	<-p.done
}

// refresh asks the module for its upstreams and publishes them. On an
// error the last set stays, and the error is logged once until the module
// answers again.
func (p *poll) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	ups, err := p.mod.GetUpstreams(pollRequest(ctx))
	if err != nil {
		if ctx.Err() == nil && !p.failing {
			p.logger.Error("getting dynamic backends failed; keeping the last known", zap.Error(err))
			p.failing = true
		}
		return
	}
	if p.failing {
		p.logger.Info("dynamic backends answer again", zap.Int("backends", len(ups)))
		p.failing = false
	}
	urls := make([]*url.URL, 0, len(ups))
	for _, up := range ups {
		u, err := p.backendURL(up.Dial)
		if err != nil {
			p.logger.Warn("ignoring a dynamic backend", zap.String("dial", up.Dial), zap.Error(err))
			continue
		}
		urls = append(urls, u)
	}
	p.set.update(urls)
}

// backendURL makes a backend's URL of a dial address: [network/]host:port,
// TCP only.
func (p *poll) backendURL(dial string) (*url.URL, error) {
	addr, err := caddy.ParseNetworkAddress(dial)
	if err != nil {
		return nil, err
	}
	switch addr.Network {
	case "tcp", "tcp4", "tcp6":
	default:
		return nil, &net.AddrError{Err: "network " + addr.Network + " is not TCP", Addr: dial}
	}
	if addr.PortRangeSize() != 1 {
		return nil, &net.AddrError{Err: "not one port", Addr: dial}
	}
	return balancer.ParseBackendURL(p.scheme + "://" + addr.JoinHostPort(0))
}

// pollRequest is the request a poll passes to GetUpstreams: the modules
// read its context, and placeholders through its replacer.
func pollRequest(ctx context.Context) *http.Request {
	ctx = context.WithValue(ctx, caddy.ReplacerCtxKey, caddy.NewReplacer())
	r, _ := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	return r
}
