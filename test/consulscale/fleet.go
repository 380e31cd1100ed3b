package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/consul/api"
	"golang.org/x/sync/errgroup"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// churnProfile says how each backend's simulated connection count moves.
type churnProfile struct {
	name      string
	mean      float64       // connections a backend holds on average
	sigma     float64       // random-walk standard deviation per √second, as a fraction of mean
	revert    float64       // pull back to mean, per second (Ornstein-Uhlenbeck)
	burstMean time.Duration // mean time between bursts per backend (0: none)
	burst     float64       // burst size as a fraction of mean (half to all of it, either sign)
}

// fleet is N backends in this process, each a real wsbackend.Register with
// its own Counter and its own HTTP client to the agent it registers with.
type fleet struct {
	regs     []*wsbackend.Registration
	counters []*wsbackend.Counter
	targets  []float64
	tr       *tracker
	profile  churnProfile
	cancel   context.CancelFunc
	done     chan struct{}

	registers atomic.Int64 // PUT /v1/agent/service/register
	ttl       atomic.Int64 // PUT /v1/agent/check/update
}

const serviceName = "wsscale"

func backendID(i int) string { return fmt.Sprintf("b%05d", i) }

// startFleet registers n backends, backend i with the agent at
// addrs[i%len(addrs)], and starts the churn. opts carries the publishing options (zero: the library's defaults).
func startFleet(ctx context.Context, addrs []string, n int, prof churnProfile, tr *tracker, opts wsbackend.RegistrationOptions) (*fleet, error) {
	ctx, cancel := context.WithCancel(ctx)
	f := &fleet{
		regs: make([]*wsbackend.Registration, n), counters: make([]*wsbackend.Counter, n),
		targets: make([]float64, n), tr: tr, profile: prof, cancel: cancel, done: make(chan struct{}),
	}
	var g errgroup.Group
	g.SetLimit(16)
	for i := range n {
		f.counters[i] = new(wsbackend.Counter)
		start := prof.mean * (0.7 + 0.6*rand.Float64())
		f.targets[i] = start
		f.counters[i].Add(int64(math.Round(start)))
		tr.addBackend(backendID(i))
		g.Go(func() error {
			base := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}
			hc := &http.Client{Transport: &publishRT{base: base, f: f}}
			client, err := api.NewClient(&api.Config{Address: addrs[i%len(addrs)], Scheme: "http", HttpClient: hc})
			if err != nil {
				return err
			}
			o := opts
			o.Client = client
			o.Service = serviceName
			o.ID = backendID(i)
			o.Address = "127.0.0.1"
			o.Port = 20000 + i
			o.Counter = f.counters[i]
			r, err := wsbackend.Register(ctx, o)
			if err != nil {
				return err
			}
			f.regs[i] = r
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		cancel()
		return nil, err
	}
	go f.churn(ctx)
	return f, nil
}

func (f *fleet) stop() {
	f.cancel()
	<-f.done
}

// churn moves every backend's count: a mean-reverting random walk of sigma
// per √second plus, now and then, a burst (a wave of connects or of
// disconnects). Backends are updated in 10 interleaved groups every 25 ms,
// so each moves every 250 ms and the fleet does not move in lockstep.
func (f *fleet) churn(ctx context.Context) {
	defer close(f.done)
	const groups, tick = 10, 25 * time.Millisecond
	dt := (groups * tick).Seconds()
	p := f.profile
	t := time.NewTicker(tick)
	defer t.Stop()
	for k := 0; ; k++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i := k % groups; i < len(f.counters); i += groups {
			if p.name == "worst" {
				// Every count swings by 25% every second (phase per
				// backend), so every backend publishes as often as
				// MinPublishInterval allows: the worst case of today's
				// reporting, as in the first probe.
				x := p.mean
				if (k/groups+i)%8 >= 4 {
					x *= 1.25
				}
				c := f.counters[i]
				if d := int64(x) - c.Live(); d != 0 {
					c.Add(d)
				}
				continue
			}
			x := f.targets[i]
			x += p.mean*p.sigma*math.Sqrt(dt)*rand.NormFloat64() + p.revert*dt*(p.mean-x)
			if p.burstMean > 0 && rand.Float64() < dt/p.burstMean.Seconds() {
				b := p.mean * p.burst * (0.5 + 0.5*rand.Float64())
				if rand.IntN(2) == 0 {
					b = -b
				}
				x += b
			}
			x = max(x, 0)
			f.targets[i] = x
			c := f.counters[i]
			if d := int64(math.Round(x)) - c.Live(); d != 0 {
				c.Add(d)
			}
		}
	}
}

// publishRT sits in each backend's HTTP client: it tells the tracker of
// every re-registration (its ID and meta, before it is sent; its return)
// and counts the TTL heartbeats.
type publishRT struct {
	base http.RoundTripper
	f    *fleet
}

func (rt *publishRT) RoundTrip(req *http.Request) (*http.Response, error) {
	switch {
	case req.Method == http.MethodPut && req.URL.Path == "/v1/agent/service/register" && req.Body != nil:
		body, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		r2 := req.Clone(req.Context())
		r2.Body = io.NopCloser(bytes.NewReader(body))
		r2.ContentLength = int64(len(body))
		var reg struct {
			ID   string
			Meta map[string]string
		}
		_ = json.Unmarshal(body, &reg)
		p := rt.f.tr.sent(reg.ID, pubKey(reg.Meta))
		rt.f.registers.Add(1)
		resp, err := rt.base.RoundTrip(r2)
		if err == nil && resp.StatusCode == http.StatusOK {
			rt.f.tr.returned(p, time.Now())
		} else {
			rt.f.tr.failed(p)
		}
		return resp, err
	case strings.HasPrefix(req.URL.Path, "/v1/agent/check/update/"):
		rt.f.ttl.Add(1)
	}
	return rt.base.RoundTrip(req)
}

// pubKey identifies one published report of a backend.
func pubKey(meta map[string]string) string {
	return meta[protocol.MetaCountedAt] + "/" + meta[protocol.MetaConnections]
}

// tracker follows every publish until every balancer has seen it (or a
// later publish of the same backend, which supersedes it).
type tracker struct {
	mu        sync.Mutex
	balancers int
	backends  map[string]*backendTrack
	unknown   int64 // instances seen with a report the tracker never saw sent
}

type backendTrack struct {
	seqByKey map[string]int
	pubs     []*pub // pubs[seq-1]
	seen     []int  // per balancer, the latest seq it saw
}

type pub struct {
	b        *backendTrack
	seq      int
	sentAt   time.Time
	returned time.Time // zero until the register call returned 200
	failed   bool
	seenBy   int
	lastSeen time.Time // when the last balancer saw it (or a later publish)
}

func newTracker(balancers int) *tracker {
	return &tracker{balancers: balancers, backends: make(map[string]*backendTrack)}
}

func (t *tracker) addBackend(id string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.backends[id] = &backendTrack{seqByKey: make(map[string]int), seen: make([]int, t.balancers)}
}

func (t *tracker) sent(id, key string) *pub {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.backends[id]
	if b == nil {
		return nil
	}
	p := &pub{b: b, seq: len(b.pubs) + 1, sentAt: time.Now()}
	b.pubs = append(b.pubs, p)
	b.seqByKey[key] = p.seq
	return p
}

func (t *tracker) returned(p *pub, at time.Time) {
	if p == nil {
		return
	}
	t.mu.Lock()
	p.returned = at
	t.mu.Unlock()
}

func (t *tracker) failed(p *pub) {
	if p == nil {
		return
	}
	t.mu.Lock()
	p.failed = true
	t.mu.Unlock()
}

// observe is balancer j's subscriber: a new set of instances arrived now.
func (t *tracker) observe(j int, ids []string, keys []string, now time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i, id := range ids {
		b := t.backends[id]
		if b == nil {
			continue
		}
		s, ok := b.seqByKey[keys[i]]
		if !ok {
			t.unknown++
			continue
		}
		for ; b.seen[j] < s; b.seen[j]++ {
			p := b.pubs[b.seen[j]]
			p.seenBy++
			p.lastSeen = now
		}
	}
}

// latencyStats summarizes the publishes that returned within [from, to):
// the time from the register call's return until the last balancer saw it
// (0 when every balancer saw it before the call returned).
type latencyStats struct {
	published  int // returned within the window
	complete   int // of which every balancer saw
	p50, p99   time.Duration
	max        time.Duration
	writeP50   time.Duration // register call duration
	writeP99   time.Duration
	beforeCall int // seen by every balancer before the call returned
}

func (t *tracker) stats(from, to time.Time) latencyStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	var st latencyStats
	var lat, wr []time.Duration
	for _, b := range t.backends {
		for _, p := range b.pubs {
			if p.failed || p.returned.IsZero() || p.returned.Before(from) || !p.returned.Before(to) {
				continue
			}
			st.published++
			wr = append(wr, p.returned.Sub(p.sentAt))
			if p.seenBy < t.balancers {
				continue
			}
			st.complete++
			d := p.lastSeen.Sub(p.returned)
			if d <= 0 {
				d = 0
				st.beforeCall++
			}
			lat = append(lat, d)
		}
	}
	st.p50, st.p99, st.max = quantile(lat, 0.5), quantile(lat, 0.99), quantile(lat, 1)
	st.writeP50, st.writeP99 = quantile(wr, 0.5), quantile(wr, 0.99)
	return st
}

// pendingIn counts the publishes returned within [from, to) that some
// balancer has not seen yet.
func (t *tracker) pendingIn(from, to time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, b := range t.backends {
		for _, p := range b.pubs {
			if !p.failed && !p.returned.IsZero() && !p.returned.Before(from) && p.returned.Before(to) && p.seenBy < t.balancers {
				n++
			}
		}
	}
	return n
}
