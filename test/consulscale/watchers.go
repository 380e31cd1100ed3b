package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/consul"
	core "github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// balancer is what a balancer runs to follow the fleet: the real
// consul.Watcher and consul.Source, over an HTTP client of its own whose
// bytes are counted.
type balancer struct {
	w     *consul.Watcher
	src   *consul.Source
	unsub func()
	wire  atomic.Int64 // bytes read from the agent's connections (headers, gzip)
	body  atomic.Int64 // health answers' JSON bytes (decompressed)
	resps atomic.Int64 // health answers
}

// watchOptions is what the balancers' watchers are given.
type watchOptions struct {
	consistency string
	cached      bool // add ?cached to the health queries (the agent cache)
	rate        rate.Limit
	burst       int
	noGzip      bool // the balancers' transports do not ask for gzip
}

func startBalancer(ctx context.Context, j int, addr string, tr *tracker, wo watchOptions) (*balancer, error) {
	b := &balancer{}
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	base := &http.Transport{
		DialContext: func(ctx context.Context, network, address string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &countingConn{Conn: c, n: &b.wire}, nil
		},
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     90 * time.Second,
		// Like consul/api's default transport, and so the plugin's, this
		// asks for gzip unless told not to.
		DisableCompression: wo.noGzip,
	}
	hc := &http.Client{Transport: &bodyRT{base: base, b: b, cached: wo.cached}}
	client, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", HttpClient: hc})
	if err != nil {
		return nil, err
	}
	cfg := consul.Config{Address: addr, Service: serviceName, Consistency: wo.consistency}
	b.w = consul.NewWatcher(client, cfg, &consul.WatchOptions{Rate: wo.rate, Burst: wo.burst})
	if err := b.w.Start(ctx); err != nil {
		return nil, err
	}
	b.src = consul.NewSource(b.w, core.NewBackendStore(), nil)
	ids, keys := []string{}, []string{}
	b.unsub = b.w.Subscribe(func(set []consul.Instance) {
		now := time.Now()
		ids, keys = ids[:0], keys[:0]
		for _, in := range set {
			ids = append(ids, in.ID)
			keys = append(keys, pubKey(in.Meta))
		}
		tr.observe(j, ids, keys, now)
	})
	return b, nil
}

func (b *balancer) stop() {
	b.unsub()
	b.src.Close()
	b.w.Stop()
}

// bodyRT counts the health answers' JSON bytes and, when asked, adds
// ?cached to the health queries.
type bodyRT struct {
	base   http.RoundTripper
	b      *balancer
	cached bool
}

func (rt *bodyRT) RoundTrip(req *http.Request) (*http.Response, error) {
	if !strings.HasPrefix(req.URL.Path, "/v1/health/service/") {
		return rt.base.RoundTrip(req)
	}
	if rt.cached {
		req = req.Clone(req.Context())
		q := req.URL.Query()
		q.Set("cached", "")
		req.URL.RawQuery = q.Encode()
	}
	resp, err := rt.base.RoundTrip(req)
	if err == nil {
		rt.b.resps.Add(1)
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &rt.b.body}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}
