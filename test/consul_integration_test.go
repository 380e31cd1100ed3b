package test

// Consul discovery, end to end, against real Consul agents (`consul agent
// -dev`, Consul 1.14.11, run by package consuldev): real Caddy processes
// (ws_balancer with a consul block, or reverse_proxy with dynamic consul and
// lb_policy ws_least_conn), backends that register in Consul and publish
// their live connection count in their service meta, and WebSocket clients.
//
// Tests that only register and watch share the package's agent and keep
// apart by service name (csServiceName; service IDs start with it too, as
// IDs are per agent). Tests that stop, restart or lock down an agent start
// one of their own. Two kinds of backends:
//   - csBackend, an echo backend in this process that registers itself
//     through Consul's HTTP API, for tests that control its reports and
//     heartbeats (freeze it, make it leave, give it garbage meta);
//   - cmd/wsecho processes (csWSEcho), which register and report through the
//     project's library (wsbackend.Register), for what the library must do
//     on its own, such as registering again after an agent restart.
//
// Figures a test measures are logged with t.Logf. Where a test bounds a
// delay (a backend seen, a lapsed one dropped), the bound is the test's
// deadline or a measured figure with margin, said where it is set: the
// machine these run on has 2 cores, shared, and the Caddy processes run with
// the race detector.

import (
	"context"
	"fmt"
	"hash/fnv"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// csContext bounds a test.
func csContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// csServiceName is a Consul service name of the test's own, so that tests
// sharing an agent see only their own backends.
func csServiceName(t *testing.T) string {
	var b strings.Builder
	b.WriteString("ws-")
	for _, r := range strings.ToLower(strings.TrimPrefix(t.Name(), "TestConsul")) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := strings.TrimRight(b.String(), "-")
	if len(s) > 48 {
		// Long subtest names could share a prefix: keep them apart by a
		// hash of the whole name.
		h := fnv.New32a()
		h.Write([]byte(t.Name()))
		s = fmt.Sprintf("%s-%08x", s[:39], h.Sum32())
	}
	return s
}

// csLibraryPace is how often the library's backends publish at most
// (wsbackend.DefaultMinPublishInterval). Tests of how fast a balancer drops
// a backend publish no faster: every publish wakes every watcher of the
// service, and a watcher takes at most 2 answers a second
// (consul.DefaultRate), so backends publishing every 100 ms keep it at that
// limit and a change such as a check going critical waits up to 500 ms for
// its turn (measured: connections went to a lapsed backend for up to 260 ms
// after its check went critical).
const csLibraryPace = 2 * time.Second

// csBackendOptions shape a csBackend.
type csBackendOptions struct {
	TTL          time.Duration     // the TTL check's; default 30s
	PublishEvery time.Duration     // at most one re-registration per; default 100ms
	ExtraMeta    map[string]string // written after the count, so it may replace it
}

// csBackend is an echo backend registered in Consul that follows the load
// report protocol: it re-registers with ws_connections set to its live
// count and ws_counted_at to when it read it, whenever the count has
// changed (at most every PublishEvery), and passes its TTL check
// regularly, until frozen.
type csBackend struct {
	*harness.EchoBackend
	Service, ID string
	c           *api.Client
	opts        csBackendOptions
	port        int

	mu        sync.Mutex // held during each publish or heartbeat
	frozen    bool
	published int64
	writes    atomic.Int64

	stop chan struct{}
	done chan struct{}
}

// csStartBackend starts a backend of service with ID <service>-<name>,
// registered through c.
func csStartBackend(t *testing.T, ctx context.Context, c *api.Client, service, name string, opts csBackendOptions) *csBackend {
	t.Helper()
	if opts.TTL == 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.PublishEvery == 0 {
		opts.PublishEvery = 100 * time.Millisecond
	}
	echo := harness.StartEcho(t, harness.EchoOptions{})
	_, p, _ := strings.Cut(echo.Addr, ":")
	port, _ := strconv.Atoi(p)
	b := &csBackend{
		EchoBackend: echo, Service: service, ID: service + "-" + name, c: c, opts: opts, port: port,
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if err := b.register(ctx, 0, time.Now()); err != nil {
		t.Fatalf("registering %s: %v", b.ID, err)
	}
	go b.run()
	t.Cleanup(func() { close(b.stop); <-b.done })
	return b
}

func (b *csBackend) register(ctx context.Context, conns int64, countedAt time.Time) error {
	meta := map[string]string{
		protocol.MetaConnections: strconv.FormatInt(conns, 10),
		protocol.MetaCountedAt:   strconv.FormatInt(countedAt.UnixMilli(), 10),
	}
	for k, v := range b.opts.ExtraMeta {
		meta[k] = v
	}
	reg := &api.AgentServiceRegistration{
		ID: b.ID, Name: b.Service, Address: "127.0.0.1", Port: b.port, Meta: meta,
		Check: &api.AgentServiceCheck{
			CheckID: "ttl:" + b.ID, TTL: b.opts.TTL.String(), Status: api.HealthPassing,
			// Consul's minimum, as the library uses by default. No test
			// waits for it: what users rely on is that a lapsed backend
			// gets no new connections, which happens when the check turns
			// critical, long before.
			DeregisterCriticalServiceAfter: "1m",
		},
	}
	b.writes.Add(1)
	if err := b.c.Agent().ServiceRegisterOpts(reg, api.ServiceRegisterOpts{}.WithContext(ctx)); err != nil {
		return err
	}
	b.published = conns
	return nil
}

func (b *csBackend) run() {
	defer close(b.done)
	beatEvery := b.opts.TTL / 4
	tick := time.NewTicker(min(b.opts.PublishEvery, beatEvery))
	defer tick.Stop()
	lastBeat, lastPublish := time.Now(), time.Now()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		}
		b.mu.Lock()
		if !b.frozen {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			// Errors are retried on the next tick.
			if live := b.Live(); live != b.published && time.Since(lastPublish) >= b.opts.PublishEvery {
				if b.register(ctx, live, time.Now()) == nil {
					lastBeat, lastPublish = time.Now(), time.Now() // re-registering restarts the TTL
				}
			}
			if time.Since(lastBeat) >= beatEvery {
				if b.c.Agent().UpdateTTLOpts("ttl:"+b.ID, "alive", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx)) == nil {
					lastBeat = time.Now()
				}
			}
			cancel()
		}
		b.mu.Unlock()
	}
}

// Freeze passes the TTL check one last time, then stops the backend's
// reports and TTL updates, as a hung process would. The TTL runs from the
// moment Freeze returns.
func (b *csBackend) Freeze(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frozen = true
	return b.c.Agent().UpdateTTLOpts("ttl:"+b.ID, "last words", api.HealthPassing, (&api.QueryOptions{}).WithContext(ctx))
}

// Leave deregisters the backend, as one shutting down gracefully does
// first, and stops its reports. Its connections stay open.
func (b *csBackend) Leave(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.frozen = true
	return b.c.Agent().ServiceDeregisterOpts(b.ID, (&api.QueryOptions{}).WithContext(ctx))
}

// csWSEcho is a cmd/wsecho backend process that registers and reports
// through the project's library.
type csWSEcho struct {
	*echoProcess
	ID   string
	proc *harness.Process
}

// csStartWSEcho starts cmd/wsecho (built without the race detector)
// registered with the agent at agentAddr as service, with ID
// <service>-<name>, and token as its ACL token if not empty.
func csStartWSEcho(t *testing.T, agentAddr, service, name, token string) *csWSEcho {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
	id := service + "-" + name
	args := []string{"-listen", addr, "-consul", agentAddr, "-service", service, "-id", id, "-drain-wait", "0s"}
	if token != "" {
		args = append(args, "-token", token)
	}
	p := harness.StartProcess(t, addr, harness.WSEchoBinary(t), args...)
	return &csWSEcho{echoProcess: &echoProcess{addr: addr}, ID: id, proc: p}
}

func csWSLives(t *testing.T, bs []*csWSEcho) []int64 {
	t.Helper()
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b.live(t)
	}
	return out
}

// csWaitWSLive waits until the wsecho backends hold total connections
// between them.
func csWaitWSLive(t *testing.T, ctx context.Context, bs []*csWSEcho, total int64) []int64 {
	t.Helper()
	harness.WaitFor(ctx, 10*time.Second, func() bool {
		var sum int64
		for _, l := range csWSLives(t, bs) {
			sum += l
		}
		return sum == total
	})
	return csWSLives(t, bs)
}

// csCaddy starts Caddy with siteBody. The harness fails the test if Caddy
// races (in a -race build), panics or ends abnormally.
func csCaddy(t *testing.T, siteBody string) *harness.Caddy {
	t.Helper()
	return harness.StartCaddy(t, siteBody)
}

// csConsulBlock is the consul options for a Caddyfile.
func csConsulBlock(addr, service, token, indent string) string {
	s := fmt.Sprintf("%s\taddress %s\n%s\tservice %s\n%s\twait 30s\n", indent, addr, indent, service, indent)
	if token != "" {
		s += fmt.Sprintf("%s\ttoken %s\n", indent, token)
	}
	return s
}

// csBalancerSite is a site body with ws_balancer over Consul.
func csBalancerSite(addr, service, token string) string {
	return "\tws_balancer {\n\t\tconsul {\n" + csConsulBlock(addr, service, token, "\t\t") + "\t\t}\n\t}\n\trespond \"plain http\" 200\n"
}

// csReverseProxySite is a site body with stock reverse_proxy over Consul.
func csReverseProxySite(addr, service, token string) string {
	return "\treverse_proxy {\n\t\tdynamic consul {\n" + csConsulBlock(addr, service, token, "\t\t") +
		"\t\t}\n\t\tlb_policy ws_least_conn\n\t}\n"
}

// csObservedReverseProxySite is csReverseProxySite plus, on a path no
// client uses, a ws_balancer with the same consul settings. The two share
// the watch and each backend's state (reports, counts), so the admin API,
// which lists only ws_balancer's backends, shows what reverse_proxy
// balances by: tests wait on it instead of sleeping.
func csObservedReverseProxySite(addr, service, token string) string {
	return "\tws_balancer /wsb-observer* {\n\t\tconsul {\n" + csConsulBlock(addr, service, token, "\t\t") + "\t\t}\n\t}\n" +
		csReverseProxySite(addr, service, token)
}

// csOpen opens n connections one after the other, alternating between the
// Caddy instances, checks each with an echo and returns them (closed with
// the test).
func csOpen(t *testing.T, ctx context.Context, caddies []*harness.Caddy, n int) []*websocket.Conn {
	t.Helper()
	urls := make([]string, len(caddies))
	for i, c := range caddies {
		urls[i] = c.URL("/")
	}
	return csOpenURLs(t, ctx, urls, n)
}

// csOpenDirect opens n connections straight to a backend at addr, past
// every balancer.
func csOpenDirect(t *testing.T, ctx context.Context, addr string, n int) []*websocket.Conn {
	t.Helper()
	return csOpenURLs(t, ctx, []string{"ws://" + addr + "/"}, n)
}

func csOpenURLs(t *testing.T, ctx context.Context, urls []string, n int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c, resp, err := harness.Dial(ctx, urls[i%len(urls)], nil)
		if err != nil {
			status := ""
			if resp != nil {
				status = resp.Status
			}
			t.Fatalf("connection %d through %s: %v %s", i, urls[i%len(urls)], err, status)
		}
		conns = append(conns, c)
		if err := harness.Echo(c, "hi", 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
	}
	return conns
}

func csLives(bs []*csBackend) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b.Live()
	}
	return out
}

// csWaitLive waits until the backends hold total connections between them
// (the last upgrades may still be on their way).
func csWaitLive(t *testing.T, bs []*csBackend, total int64) []int64 {
	t.Helper()
	harness.WaitFor(t.Context(), 5*time.Second, func() bool {
		var sum int64
		for _, l := range csLives(bs) {
			sum += l
		}
		return sum == total
	})
	return csLives(bs)
}

// csListed counts the backends a Caddy lists that are not leftovers of
// removed ones (which it lists while they hold connections).
func csListed(c *harness.Caddy) (int, error) {
	s, err := c.Backends()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, b := range s.Backends {
		if b.State != "removed" {
			n++
		}
	}
	return n, nil
}

// csSeen waits until every Caddy's admin API lists n backends, and returns
// how long that took. within is the test's deadline for it, not a claim.
func csSeen(t *testing.T, caddies []*harness.Caddy, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ok := harness.WaitFor(t.Context(), within, func() bool {
		for _, c := range caddies {
			if got, err := csListed(c); err != nil || got != n {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("caddies did not list %d backends within %s", n, within)
	}
	return time.Since(start)
}

// csWhenListed polls the caddies' admin APIs every 20 ms from now on, and
// sends how long it took until every one lists n backends.
func csWhenListed(ctx context.Context, caddies []*harness.Caddy, n int) <-chan time.Duration {
	ch := make(chan time.Duration, 1)
	start := time.Now()
	go func() {
		for ctx.Err() == nil {
			all := true
			for _, c := range caddies {
				got, err := csListed(c)
				all = all && err == nil && got == n
			}
			if all {
				ch <- time.Since(start)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	return ch
}

// csAwait receives from a csWhenListed channel; within is the test's
// deadline for it, not a claim.
func csAwait(t *testing.T, ch <-chan time.Duration, within time.Duration, what string) time.Duration {
	t.Helper()
	select {
	case d := <-ch:
		return d
	case <-time.After(within):
		t.Fatalf("%s: not within %s", what, within)
		return 0
	}
}

// csWaitReported waits until every Caddy has taken in every backend's
// report of its current count, and returns how long that took.
func csWaitReported(t *testing.T, ctx context.Context, caddies []*harness.Caddy, bs []*csBackend) time.Duration {
	t.Helper()
	start := time.Now()
	var last string
	ok := harness.WaitFor(ctx, 20*time.Second, func() bool {
		for _, c := range caddies {
			s, err := c.Backends()
			if err != nil {
				last = err.Error()
				return false
			}
			reported := make(map[string]int64)
			for _, e := range s.Backends {
				if e.Reported != nil {
					reported[e.ID] = *e.Reported
				}
			}
			for _, b := range bs {
				if n, ok := reported[b.ID]; !ok || n != b.Live() {
					last = fmt.Sprintf("%s reported %d (present %v), holds %d", b.ID, n, ok, b.Live())
					return false
				}
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("reports not taken in within 20s: %s", last)
	}
	return time.Since(start)
}

// csDial is one connection opened by csStream: when the dial started and
// which backend took it (-1: none of those watched).
type csDial struct {
	At      time.Time
	Backend int
}

// csStream opens connections one at a time through the caddies in turn,
// gap apart, until done reports true, and records where each landed (the
// backend whose count grew: connections are opened one at a time, and
// nothing else connects meanwhile). The connections are held until the
// test ends.
func csStream(t *testing.T, ctx context.Context, caddies []*harness.Caddy, bs []*csBackend, gap time.Duration, done func() bool) []csDial {
	t.Helper()
	var out []csDial
	var conns []*websocket.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := 0; !done(); i++ {
		before := csLives(bs)
		start := time.Now()
		conn, resp, err := harness.Dial(ctx, caddies[i%len(caddies)].URL("/"), nil)
		if err != nil {
			status := ""
			if resp != nil {
				status = resp.Status
			}
			t.Fatalf("connection %d at %s: %v %s", i, start.Format("15:04:05.000"), err, status)
		}
		conns = append(conns, conn)
		if err := harness.Echo(conn, "x", 5*time.Second); err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		landed := -1
		for j, n := range csLives(bs) {
			if n > before[j] {
				landed = j
			}
		}
		out = append(out, csDial{At: start, Backend: landed})
		time.Sleep(gap)
	}
	return out
}

// csLandedAfter counts the dials started after from that landed on
// backend, and returns the last one's start relative to from.
func csLandedAfter(dials []csDial, backend int, from time.Time) (n int, last time.Duration) {
	last = -1
	for _, d := range dials {
		if d.Backend == backend && d.At.After(from) {
			n++
			last = d.At.Sub(from)
		}
	}
	return n, last
}

func csDialsAfter(dials []csDial, from time.Time) int {
	n := 0
	for _, d := range dials {
		if d.At.After(from) {
			n++
		}
	}
	return n
}

// csMs formats a measured delay in milliseconds with a tenth, as
// Round(time.Millisecond) shows a sub-millisecond one as 0s.
func csMs(d time.Duration) string {
	if d < 0 {
		return "none" // csLandedAfter's "no such dial"
	}
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}

// csWithin fails the test unless every count is within want ± slack.
func csWithin(t *testing.T, what string, got []int64, want, slack int64) {
	t.Helper()
	for i, n := range got {
		if n < want-slack || n > want+slack {
			t.Errorf("%s: backend %d holds %d connections, want %d ± %d (all: %v)", what, i, n, want, slack, got)
		}
	}
}

// Two Caddy instances and three backends registered in the agent; 600
// connections opened alternately through both end 200 ± 20 per backend,
// with ws_balancer and with reverse_proxy's ws_least_conn.
func TestConsulBalanceTwoInstancesWSBalancer(t *testing.T) {
	t.Parallel()
	csBalanceTwoInstances(t, csBalancerSite)
}

func TestConsulBalanceTwoInstancesReverseProxy(t *testing.T) {
	t.Parallel()
	csBalanceTwoInstances(t, csObservedReverseProxySite)
}

func csBalanceTwoInstances(t *testing.T, site func(addr, service, token string) string) {
	ctx := csContext(t, 4*time.Minute)
	agent := consuldev.Shared(t)
	c := agent.Client(t, "")
	svc := csServiceName(t)
	var bs []*csBackend
	for i := range 3 {
		bs = append(bs, csStartBackend(t, ctx, c, svc, strconv.Itoa(i), csBackendOptions{}))
	}
	caddies := []*harness.Caddy{
		csCaddy(t, site(agent.Addr(), svc, "")),
		csCaddy(t, site(agent.Addr(), svc, "")),
	}
	csSeen(t, caddies, 3, 30*time.Second)
	start := time.Now()
	csOpen(t, ctx, caddies, 600)
	got := csWaitLive(t, bs, 600)
	t.Logf("600 connections in %s: per backend %v; %d registrations by the backends",
		time.Since(start).Round(time.Millisecond), got, bs[0].writes.Load()+bs[1].writes.Load()+bs[2].writes.Load())
	csWithin(t, "600 through two balancers", got, 200, 20)
}

// The reports make the choice global: a backend that already holds 100
// connections opened elsewhere (and says so in its meta) gets few of the
// next 200, whichever proxy module balances.
func TestConsulReportsSteerLoad(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		site func(addr, service, token string) string
	}{
		{"ws_balancer", csBalancerSite},
		{"reverse_proxy", csObservedReverseProxySite},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := csContext(t, 3*time.Minute)
			agent := consuldev.Shared(t)
			c := agent.Client(t, "")
			svc := csServiceName(t)
			var bs []*csBackend
			for i := range 3 {
				bs = append(bs, csStartBackend(t, ctx, c, svc, strconv.Itoa(i), csBackendOptions{}))
			}
			csOpenDirect(t, ctx, bs[0].Addr, 100)
			caddy := csCaddy(t, tc.site(agent.Addr(), svc, ""))
			took := csWaitReported(t, ctx, []*harness.Caddy{caddy}, bs)
			csOpen(t, ctx, []*harness.Caddy{caddy}, 200)
			got := csWaitLive(t, bs, 300)
			t.Logf("reports taken in %s after Caddy started; after 100 direct and 200 balanced: %v", csMs(took), got)
			if got[0] > 110 {
				t.Errorf("backend 0 got %d of the balanced connections, want at most 10 (all: %v)", got[0]-100, got)
			}
		})
	}
}

// Two balancers share one global count, which includes connections
// neither opened (straight to a backend) and connections the other one
// opened: 30 go straight to backend 0, 60 through balancer A alone, then
// 90 through balancer B alone. B has opened none of the first 90, and still
// ends the three backends even.
func TestConsulBalancersShareOneGlobalCount(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Shared(t)
	c := agent.Client(t, "")
	svc := csServiceName(t)
	var bs []*csBackend
	for i := range 3 {
		bs = append(bs, csStartBackend(t, ctx, c, svc, strconv.Itoa(i), csBackendOptions{}))
	}
	a := csCaddy(t, csBalancerSite(agent.Addr(), svc, ""))
	b := csCaddy(t, csBalancerSite(agent.Addr(), svc, ""))
	both := []*harness.Caddy{a, b}
	csSeen(t, both, 3, 30*time.Second)

	csOpenDirect(t, ctx, bs[0].Addr, 30)
	took := csWaitReported(t, ctx, both, bs)
	t.Logf("30 straight to backend 0: both balancers took the report in within %s", csMs(took))

	csOpen(t, ctx, []*harness.Caddy{a}, 60)
	got := csWaitLive(t, bs, 90)
	t.Logf("then 60 through balancer A: %v", got)
	csWithin(t, "30 direct + 60 through A", got, 30, 3)
	took = csWaitReported(t, ctx, both, bs)
	t.Logf("both balancers took the reports in within %s", csMs(took))
	if s, err := b.Backends(); err == nil {
		loads := make([]int64, 0, len(s.Backends))
		for _, e := range s.Backends {
			loads = append(loads, e.Load)
		}
		t.Logf("balancer B, which has opened nothing yet, counts loads %v", loads)
	}

	csOpen(t, ctx, []*harness.Caddy{b}, 90)
	got = csWaitLive(t, bs, 180)
	t.Logf("then 90 through balancer B: %v", got)
	csWithin(t, "then 90 through B", got, 60, 6)
}

// A backend joining is dialled within 2 s of registering and takes the
// next connections until even; a backend leaving (deregistered, as a
// graceful shutdown does first) gets nothing new and keeps what it has.
func TestConsulBackendJoinsAndLeaves(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Shared(t)
	c := agent.Client(t, "")
	svc := csServiceName(t)
	opts := csBackendOptions{PublishEvery: csLibraryPace}
	var bs []*csBackend
	for i := range 3 {
		bs = append(bs, csStartBackend(t, ctx, c, svc, strconv.Itoa(i), opts))
	}
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
	}
	csSeen(t, caddies, 3, 30*time.Second)
	csOpen(t, ctx, caddies, 90)
	held := csWaitLive(t, bs, 90)

	// Join: connections keep coming, 20 ms apart, until the new backend has
	// its first.
	listed := csWhenListed(ctx, caddies, 4)
	joined := time.Now()
	bs = append(bs, csStartBackend(t, ctx, c, svc, "new", opts))
	dials := csStream(t, ctx, caddies, bs, 20*time.Millisecond, func() bool {
		return bs[3].Live() > 0 || time.Since(joined) > 30*time.Second
	})
	first := time.Duration(-1)
	for _, d := range dials {
		if d.Backend == 3 {
			first = d.At.Sub(joined)
			break
		}
	}
	seen := csAwait(t, listed, 30*time.Second, "both balancers listing the new backend")
	t.Logf("held %v; the new backend was listed by both balancers %s after it registered, and its first connection started %s after (%d dials meanwhile)",
		held, csMs(seen), csMs(first), len(dials))
	if first < 0 || first >= 2*time.Second {
		t.Fatalf("the new backend's first connection came %s after it registered, want under 2s", first)
	}
	// The next 30 leave the new backend still the least loaded, so each
	// balancer sends it all of its share. (How far past even a catch-up
	// goes is not tested here: two balancers catching up at once overshoot
	// by what they open within a report's lag, which the count cannot know.)
	before := bs[3].Live()
	csOpen(t, ctx, caddies, 30)
	total := int64(90 + len(dials) + 30)
	got := csWaitLive(t, bs, total)
	t.Logf("30 more: the new backend took %d; %d in all: %v", got[3]-before, total, got)
	if got[3]-before < 27 {
		t.Errorf("the new backend took %d of the next 30 connections, want at least 27 (all: %v)", got[3]-before, got)
	}

	// Leave: the new backend deregisters while connections keep coming.
	dropped := csWhenListed(ctx, caddies, 3)
	if err := bs[3].Leave(ctx); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	dials = csStream(t, ctx, caddies, bs, 20*time.Millisecond, func() bool { return time.Since(left) > 2*time.Second })
	n, last := csLandedAfter(dials, 3, left)
	gone := csAwait(t, dropped, 30*time.Second, "both balancers dropping the backend that left")
	t.Logf("after it deregistered: both balancers dropped it within %s; %d of %d connections in the next 2s went to it (the last started %s after)",
		csMs(gone), n, len(dials), csMs(last))
	// The deregistration is a Raft write that wakes the balancers' blocking
	// queries at once. 500 ms is a bound with margin (measured: see the log
	// line above, tens of ms under -race on 2 busy cores).
	if late, _ := csLandedAfter(dials, 3, left.Add(500*time.Millisecond)); late > 0 {
		t.Errorf("%d connections started more than 500ms after the backend left went to it", late)
	}
	csOpen(t, ctx, caddies, 30)
	got2 := csWaitLive(t, bs, total+int64(len(dials))+30)
	t.Logf("30 more: %v", got2)
	// Neither more nor fewer: it keeps the connections it had.
	if got2[3] != got[3]+int64(n) {
		t.Errorf("the backend that left went from %d to %d connections, want none of the 30 later ones and none lost", got[3]+int64(n), got2[3])
	}
}

// A backend that stops heartbeating gets no new connection once its TTL
// check has gone critical (after its own TTL, 2 s here; Consul's own
// timings are left alone), and keeps the connections it has.
func TestConsulTTLLapse(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	const ttl = 2 * time.Second
	agent := consuldev.Shared(t)
	c := agent.Client(t, "")
	svc := csServiceName(t)
	opts := csBackendOptions{TTL: ttl, PublishEvery: csLibraryPace}
	bs := []*csBackend{
		csStartBackend(t, ctx, c, svc, "good", opts),
		csStartBackend(t, ctx, c, svc, "hung", opts),
	}
	hung := bs[1]
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
	}
	csSeen(t, caddies, 2, 30*time.Second)
	held := csOpen(t, ctx, caddies, 20)
	csWaitLive(t, bs, 20)

	// When Consul marks the check critical, seen through a blocking query
	// on the service's checks (it answers as soon as the status changes).
	critical := make(chan time.Time, 1)
	go func() {
		var index uint64
		for ctx.Err() == nil {
			checks, meta, err := c.Health().Checks(svc, (&api.QueryOptions{WaitIndex: index, WaitTime: 10 * time.Second}).WithContext(ctx))
			if err != nil {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			for _, ch := range checks {
				if ch.ServiceID == hung.ID && ch.Status == api.HealthCritical {
					critical <- time.Now()
					return
				}
			}
			index = meta.LastIndex
		}
	}()
	dropped := csWhenListed(ctx, caddies, 1)
	if err := hung.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	var wentCritical time.Time
	dials := csStream(t, ctx, caddies, bs, 50*time.Millisecond, func() bool {
		if wentCritical.IsZero() {
			select {
			case wentCritical = <-critical:
			default:
				return time.Since(frozen) > time.Minute
			}
		}
		return time.Since(wentCritical) > 2*time.Second
	})
	if wentCritical.IsZero() {
		t.Fatal("the hung backend's check never went critical")
	}
	gone := csAwait(t, dropped, 30*time.Second, "both balancers dropping the hung backend") - wentCritical.Sub(frozen)
	var before, beforeToHung int
	for _, d := range dials {
		if d.At.Before(wentCritical) {
			before++
			if d.Backend == 1 {
				beforeToHung++
			}
		}
	}
	n, last := csLandedAfter(dials, 1, wentCritical)
	t.Logf("check critical %s after the last TTL update (TTL %s), both balancers dropped the backend %s after that; "+
		"before, %d of %d connections went to it; after, %d of %d (the last started %s after)",
		wentCritical.Sub(frozen).Round(time.Millisecond), ttl, csMs(gone),
		beforeToHung, before, n, csDialsAfter(dials, wentCritical), csMs(last))
	// The status change is a Raft write that wakes the balancers' blocking
	// queries at once: 500 ms is a bound with margin (measured: see the log
	// line above, tens of ms under -race on 2 busy cores).
	if late, _ := csLandedAfter(dials, 1, wentCritical.Add(500*time.Millisecond)); late > 0 {
		t.Errorf("%d connections started more than 500ms after the check went critical went to the hung backend", late)
	}
	if csDialsAfter(dials, wentCritical.Add(500*time.Millisecond)) == 0 {
		t.Error("no connection was tried once the check had been critical for 500ms")
	}
	// Its existing connections are left alone.
	for _, conn := range held {
		if err := harness.Echo(conn, "still here", 5*time.Second); err != nil {
			t.Fatalf("an existing connection broke: %v", err)
		}
	}
}

// A backend put in maintenance mode (PUT
// /v1/agent/service/maintenance/:id?enable=true) gets no new connections;
// taken out of it, it is used again.
func TestConsulMaintenanceMode(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Shared(t)
	c := agent.Client(t, "")
	svc := csServiceName(t)
	opts := csBackendOptions{PublishEvery: csLibraryPace}
	bs := []*csBackend{
		csStartBackend(t, ctx, c, svc, "0", opts),
		csStartBackend(t, ctx, c, svc, "1", opts),
	}
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
	}
	csSeen(t, caddies, 2, 30*time.Second)
	csOpen(t, ctx, caddies, 10)
	held := csWaitLive(t, bs, 10)

	dropped := csWhenListed(ctx, caddies, 1)
	if err := c.Agent().EnableServiceMaintenanceOpts(bs[1].ID, "test", (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	enabled := time.Now()
	dials := csStream(t, ctx, caddies, bs, 20*time.Millisecond, func() bool { return time.Since(enabled) > time.Second })
	gone := csAwait(t, dropped, 30*time.Second, "both balancers dropping the backend in maintenance")
	n, last := csLandedAfter(dials, 1, enabled)
	t.Logf("held %v; maintenance on: both balancers dropped it within %s; %d of %d connections in the next second went to it (the last started %s after)",
		held, csMs(gone), n, len(dials), csMs(last))
	// Maintenance adds a critical check: a catalog write that wakes the
	// balancers' blocking queries at once. 500 ms is a bound with margin
	// (measured: see the log line above).
	if late, _ := csLandedAfter(dials, 1, enabled.Add(500*time.Millisecond)); late > 0 {
		t.Errorf("%d connections started more than 500ms after maintenance was enabled went to it", late)
	}
	csOpen(t, ctx, caddies, 20)
	got := csWaitLive(t, bs, int64(10+len(dials)+20))
	t.Logf("20 more: %v", got)
	if inMaintenance := got[1] - held[1] - int64(n); inMaintenance != 0 {
		t.Errorf("the backend in maintenance got %d of the 20 later connections", inMaintenance)
	}

	listed := csWhenListed(ctx, caddies, 2)
	if err := c.Agent().DisableServiceMaintenanceOpts(bs[1].ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	back := csAwait(t, listed, 30*time.Second, "both balancers listing the backend out of maintenance")
	gap := got[0] - got[1]
	csOpen(t, ctx, caddies, int(gap))
	got2 := csWaitLive(t, bs, got[0]+got[1]+gap)
	t.Logf("maintenance off: listed again within %s; %d more: %v", csMs(back), gap, got2)
	if d := got2[0] - got2[1]; d < -2 || d > 2 {
		t.Errorf("after maintenance the backends hold %v, want even ± 2", got2)
	}
}

// Garbage in a backend's ws_connections meta neither crashes Caddy nor
// skews the balancing: the balancer ignores the report (and says so in its
// log) and counts that backend by its own connections. One balancer, so
// that its own count is the whole truth and even means exactly even.
func TestConsulGarbageMeta(t *testing.T) {
	t.Parallel()
	for _, garbage := range []string{"abc", "-5", "1e99", "", "9223372036854775808"} {
		t.Run(fmt.Sprintf("%q", garbage), func(t *testing.T) {
			t.Parallel()
			ctx := csContext(t, 3*time.Minute)
			agent := consuldev.Shared(t)
			c := agent.Client(t, "")
			svc := csServiceName(t)
			bs := []*csBackend{
				csStartBackend(t, ctx, c, svc, "0", csBackendOptions{}),
				csStartBackend(t, ctx, c, svc, "1", csBackendOptions{}),
				csStartBackend(t, ctx, c, svc, "garbage", csBackendOptions{ExtraMeta: map[string]string{protocol.MetaConnections: garbage}}),
			}
			caddy := csCaddy(t, csBalancerSite(agent.Addr(), svc, ""))
			csSeen(t, []*harness.Caddy{caddy}, 3, 30*time.Second)
			csOpen(t, ctx, []*harness.Caddy{caddy}, 60)
			got := csWaitLive(t, bs, 60)
			csWaitReported(t, ctx, []*harness.Caddy{caddy}, bs[:2])
			s, err := caddy.Backends()
			if err != nil {
				t.Fatal(err)
			}
			var reported []string
			for _, e := range s.Backends {
				r := "none"
				if e.Reported != nil {
					r = strconv.FormatInt(*e.Reported, 10)
				}
				reported = append(reported, e.ID+"="+r)
				if e.ID == bs[2].ID && e.Reported != nil {
					t.Errorf("the balancer took ws_connections=%q as a report of %d", garbage, *e.Reported)
				}
			}
			t.Logf("60 connections: %v; reports as the balancer holds them: %v", got, reported)
			csWithin(t, "ws_connections="+garbage, got, 20, 2)
			select {
			case <-caddy.Done():
				t.Fatal("Caddy exited")
			default:
			}
			if garbage != "" && !strings.Contains(caddy.Log(), "ignoring malformed meta "+protocol.MetaConnections) {
				t.Error("the garbage report was not logged")
			}
		})
	}
}

// csCaddyfile is a whole Caddyfile with siteBody on a free port, admin off.
func csCaddyfile(t *testing.T, siteBody string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "Caddyfile")
	cfg := fmt.Sprintf("{\n\tadmin off\n\torder ws_balancer before respond\n\tauto_https off\n\tpersist_config off\n}\n\nhttp://127.0.0.1:%d {\n%s}\n",
		harness.FreePort(t), siteBody)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// csCaddyCmd runs caddy with args (validate or run) on siteBody, without
// any CONSUL_HTTP_* of the environment (a token there would stand in for
// a missing one), and returns its output and whether it succeeded. A run
// that is still going after 30 s has provisioned: it is stopped and
// counted as success.
func csCaddyCmd(t *testing.T, ctx context.Context, verb, siteBody string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.CaddyBinary(t), verb, "--config", csCaddyfile(t, siteBody), "--adapter", "caddyfile")
	cmd.Env = []string{"HOME=" + dir, "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_HTTP_") && !strings.HasPrefix(kv, "HOME=") && !strings.HasPrefix(kv, "XDG_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		return string(out), true
	}
	return string(out), err == nil
}

// With ACLs on (default policy deny), a missing, wrong or too weak token is
// a clear error when the config is provisioned, by `caddy validate`,
// `caddy run` and a reload; a balancer's token (service:read + node:read)
// works. The backends are cmd/wsecho processes registering with a token
// that may write their service and nothing else.
func TestConsulACL(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 4*time.Minute)
	agent := consuldev.Start(t, consuldev.Options{ACL: true, HCL: consuldev.SharedHCL})
	const svc = "ws-acl"
	backendToken := agent.Token(t, "backend", consuldev.BackendRules(svc))
	balancerToken := agent.Token(t, "balancer", consuldev.BalancerRules(svc))
	weakToken := agent.Token(t, "service-read-only", `service "`+svc+`" { policy = "read" }`)
	otherToken := agent.Token(t, "other-service", consuldev.BalancerRules("ws-other"))
	const wrongToken = "6f1e2d3c-4b5a-4978-8695-a4b3c2d1e0f9"
	bs := []*csWSEcho{
		csStartWSEcho(t, agent.Addr(), svc, "0", backendToken),
		csStartWSEcho(t, agent.Addr(), svc, "1", backendToken),
	}
	const want = "consul: permission denied: check the token"

	t.Run("refused", func(t *testing.T) {
		for _, tc := range []struct{ name, site string }{
			{"ws_balancer without a token", csBalancerSite(agent.Addr(), svc, "")},
			{"ws_balancer with a wrong token", csBalancerSite(agent.Addr(), svc, wrongToken)},
			{"ws_balancer with service read but no node read", csBalancerSite(agent.Addr(), svc, weakToken)},
			{"ws_balancer with another service's token", csBalancerSite(agent.Addr(), svc, otherToken)},
			{"reverse_proxy with a wrong token", csReverseProxySite(agent.Addr(), svc, wrongToken)},
			{"reverse_proxy with service read but no node read", csReverseProxySite(agent.Addr(), svc, weakToken)},
		} {
			for _, verb := range []string{"validate", "run"} {
				t.Run(tc.name+" "+verb, func(t *testing.T) {
					t.Parallel()
					start := time.Now()
					out, ok := csCaddyCmd(t, ctx, verb, tc.site)
					if ok || !strings.Contains(out, want) {
						t.Fatalf("caddy %s succeeded=%v, output lacks %q:\n%s", verb, ok, want, csLastLines(out, 5))
					}
					t.Logf("failed in %s: %s", time.Since(start).Round(time.Millisecond), csLastLines(out, 1))
				})
			}
		}
	})

	caddy := csCaddy(t, csBalancerSite(agent.Addr(), svc, balancerToken))
	csSeen(t, []*harness.Caddy{caddy}, 2, 30*time.Second)
	csOpen(t, ctx, []*harness.Caddy{caddy}, 4)
	for _, tc := range []struct{ name, site string }{
		{"a wrong token", csBalancerSite(agent.Addr(), svc, wrongToken)},
		{"service read but no node read", csBalancerSite(agent.Addr(), svc, weakToken)},
	} {
		err := caddy.Reload(tc.site)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("reload with %s: %v, want an error containing %q", tc.name, err, want)
		}
	}
	// The running config is untouched.
	csOpen(t, ctx, []*harness.Caddy{caddy}, 2)
	if err := caddy.Reload(csReverseProxySite(agent.Addr(), svc, balancerToken)); err != nil {
		t.Errorf("reload with the balancer's token: %v", err)
	}
	csOpen(t, ctx, []*harness.Caddy{caddy}, 2)
	got := csWaitWSLive(t, ctx, bs, 8)
	t.Logf("with the balancer's token, through ws_balancer and then reverse_proxy: %v", got)
	csWithin(t, "with the balancer's token", got, 4, 1)
}

func csLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// The agent is down for 30 s. The balancer keeps balancing new connections
// over the last known backends, logs the outage once, retries its query
// with backoff (no hot loop), and once the agent is back picks up its
// state: the backends registered again by the library, and one that
// registered only after the outage. The balancer reaches the agent through
// a consuldev.Front, which counts its requests.
func TestConsulOutageKeepsLastSet(t *testing.T) {
	t.Parallel()
	const outage = 30 * time.Second
	ctx := csContext(t, 4*time.Minute)
	agent := consuldev.Start(t, consuldev.Options{HCL: consuldev.SharedHCL})
	front := consuldev.NewFront(t, agent.Addr())
	const svc = "ws-outage"
	bs := []*csWSEcho{
		csStartWSEcho(t, agent.Addr(), svc, "0", ""),
		csStartWSEcho(t, agent.Addr(), svc, "1", ""),
	}
	caddy := csCaddy(t, csBalancerSite(front.Addr(), svc, ""))
	one := []*harness.Caddy{caddy}
	csSeen(t, one, 2, 30*time.Second)
	csOpen(t, ctx, one, 10)
	csWaitWSLive(t, ctx, bs, 10)

	queryPath := "/v1/health/service/" + svc
	agent.Stop(t)
	down := time.Now()
	queries, probes := front.Requests(queryPath), front.Requests("/v1/status/leader")
	// Serving goes on from the last known set.
	time.Sleep(2 * time.Second)
	csOpen(t, ctx, one, 20)
	got := csWaitWSLive(t, ctx, bs, 30)
	t.Logf("during the outage: 20 more connections, held as %v", got)
	csWithin(t, "during the outage", got, 15, 2)
	time.Sleep(time.Until(down.Add(outage)))
	queries, probes = front.Requests(queryPath)-queries, front.Requests("/v1/status/leader")-probes
	t.Logf("during the %s outage: %d queries of the service, %d leader probes", outage, queries, probes)
	// Backoff from 500ms doubling to 10s, with jitter: about 8 queries in
	// 30s. A hot loop would make thousands.
	if queries < 3 || queries > 15 {
		t.Errorf("%d queries during a %s outage, want 3..15", queries, outage)
	}
	if probes > int64(outage/(100*time.Millisecond)) {
		t.Errorf("%d leader probes during a %s outage: a hot loop", probes, outage)
	}
	if n := strings.Count(caddy.Log(), "consul query failed; keeping the last known backends"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}

	agent.Restart(t)
	back := time.Now()
	t.Logf("agent back after %s (stop to leader)", back.Sub(down).Round(time.Millisecond))
	bs = append(bs, csStartWSEcho(t, agent.Addr(), svc, "late", ""))
	csSeen(t, one, 3, 30*time.Second)
	t.Logf("the two backends registered again by the library and one registered after the outage were listed %s after the agent was back",
		time.Since(back).Round(time.Millisecond))
	if !harness.WaitFor(ctx, 5*time.Second, func() bool { return strings.Contains(caddy.Log(), "consul answers again") }) {
		t.Error("recovery not logged")
	}
	if n := strings.Count(caddy.Log(), "consul answers again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	csOpen(t, ctx, one, 10)
	got = csWaitWSLive(t, ctx, bs, 40)
	t.Logf("10 more after the agent came back: %v", got)
	if got[2] < 8 {
		t.Errorf("the backend registered after the outage got %d of the 10 connections after it, want most", got[2])
	}
}

// An agent restart (a dev agent comes back empty): the backends, cmd/wsecho
// processes running the project's library, find their TTL check unknown
// and register again by themselves within seconds, and the balancers
// spread new connections over them again. One backend dies while the
// agent is down, so that the state the agent comes back with differs from
// what the balancers knew: they must pick that up too.
func TestConsulAgentRestartReregisters(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Start(t, consuldev.Options{HCL: consuldev.SharedHCL})
	c := agent.Client(t, "")
	const svc = "ws-restart"
	var bs []*csWSEcho
	for i := range 4 {
		bs = append(bs, csStartWSEcho(t, agent.Addr(), svc, strconv.Itoa(i), ""))
	}
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
		csCaddy(t, csBalancerSite(agent.Addr(), svc, "")),
	}
	csSeen(t, caddies, 4, 30*time.Second)
	csOpen(t, ctx, caddies, 40)
	held := csWaitWSLive(t, ctx, bs, 40)

	agent.Stop(t)
	stopped := time.Now()
	// A backend dies meanwhile, without deregistering.
	bs[3].proc.Kill()
	bs = bs[:3]
	agent.Restart(t)
	back := time.Now()

	// From the restart on: poll Consul and the balancers every 20 ms, and
	// try a connection through each balancer in turn until one succeeds.
	var inConsul, inBalancers, firstConn time.Duration = -1, -1, -1
	var dials, failed int
	deadline := back.Add(60 * time.Second)
	for time.Now().Before(deadline) && (inConsul < 0 || inBalancers < 0 || firstConn < 0) {
		if inConsul < 0 {
			if entries, _, err := c.Health().Service(svc, "", true, (&api.QueryOptions{}).WithContext(ctx)); err == nil && len(entries) == 3 {
				inConsul = time.Since(back)
			}
		}
		if inBalancers < 0 {
			all := true
			for _, cd := range caddies {
				n, err := csListed(cd)
				all = all && err == nil && n == 3
			}
			if all {
				inBalancers = time.Since(back)
			}
		}
		if firstConn < 0 {
			dials++
			conn, _, err := harness.Dial(ctx, caddies[dials%2].URL("/"), nil)
			if err == nil {
				err = harness.Echo(conn, "x", 5*time.Second)
				conn.Close()
			}
			if err == nil {
				firstConn = time.Since(back)
			} else {
				failed++
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	outage := 0
	for _, cd := range caddies {
		outage += strings.Count(cd.Log(), "consul query failed")
	}
	t.Logf("held %v; agent down %s (stop to leader after restart); after the restart: the 3 live backends registered again in Consul after %s, "+
		"listed by both balancers (the dead one dropped) after %s; first balanced connection after %s (%d tries failed before); "+
		"the balancers logged %d failed queries",
		held, back.Sub(stopped).Round(time.Millisecond), csMs(inConsul), csMs(inBalancers), csMs(firstConn), failed, outage)
	if inConsul < 0 || inBalancers < 0 || firstConn < 0 {
		t.Fatalf("not back within 60s of the restart")
	}
	// The library heartbeats every 3 s (its default ReportInterval) and
	// registers again on the first "unknown check": 10 s is a bound with
	// margin for a heartbeat that was backing off during the outage.
	if inConsul > 10*time.Second {
		t.Errorf("the backends were registered again %s after the restart, want within 10s", inConsul)
	}
	// How soon the balancers drop the backend that died is bounded by the
	// watch's wait (30 s in csConsulBlock, plus Consul's jitter of up to a
	// sixteenth), not by a second as one would like. A watcher whose query
	// failed while the agent was down starts again from index 0 and sees
	// the new state at once (measured: 1.0 s after the restart, the
	// backends' re-registration included). One whose query saw no failure
	// across the quick restart asks the new agent with its old index,
	// which the new agent's restarted index has not reached, so the query
	// blocks until the wait ends (measured: 30.1-30.2 s; 4-7 s when
	// connections keep coming and their re-registrations push the index
	// past the old one). Its dials to the dead backend fail over to live
	// ones meanwhile.
	if limit := 30*time.Second + 30*time.Second/16 + 2*time.Second; inBalancers > limit {
		t.Errorf("the balancers dropped the dead backend %s after the restart, want within %s", inBalancers, limit)
	}

	// Spread again: each balancer counts its own connections since the
	// reports the backends published when they registered again.
	before := csWaitWSLive(t, ctx, bs, 30)
	csOpen(t, ctx, caddies, 30)
	got := csWaitWSLive(t, ctx, bs, 60)
	t.Logf("the live backends held %v; 30 more: %v", before, got)
	csWithin(t, "after the restart", got, 20, 2)
}

// Config reloads share the watch: no new watch (and no new query) per
// reload while the consul settings stay the same, one old watch stopped per
// change of settings, no goroutines left behind, connections kept. The
// balancer reaches the agent through a consuldev.Front, which counts its
// queries.
func TestConsulReloads(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Shared(t)
	front := consuldev.NewFront(t, agent.Addr())
	svc := csServiceName(t)
	bs := []*csBackend{csStartBackend(t, ctx, agent.Client(t, ""), svc, "0", csBackendOptions{PublishEvery: time.Hour})}
	addr := front.Addr()
	caddy := csCaddy(t, csBalancerSite(addr, svc, ""))
	csSeen(t, []*harness.Caddy{caddy}, 1, 30*time.Second)
	csOpen(t, ctx, []*harness.Caddy{caddy}, 5)
	path := "/v1/health/service/" + svc
	goroutines := func() int {
		n, err := caddy.Goroutines()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	reload := func(site string) {
		t.Helper()
		if err := caddy.Reload(site); err != nil {
			t.Fatal(err)
		}
	}
	// One reload to warm up what Caddy itself starts lazily.
	reload(csBalancerSite(addr, svc, "") + "\t# 0\n")
	time.Sleep(200 * time.Millisecond)
	before, queries := goroutines(), front.Requests(path)
	for i := range 5 {
		reload(csBalancerSite(addr, svc, "") + fmt.Sprintf("\t# reload %d\n", i+1))
	}
	time.Sleep(200 * time.Millisecond)
	q := front.Requests(path) - queries
	t.Logf("5 reloads with the same consul settings: %d queries", q)
	if q > 1 {
		t.Errorf("5 reloads with the same consul settings made %d queries, want none (the watch is shared)", q)
	}
	// Changing the settings replaces the watch; alternate between two.
	for i := range 4 {
		site := csBalancerSite(addr, svc, "")
		if i%2 == 0 {
			site = strings.Replace(site, "wait 30s", "wait 20s", 1)
		}
		reload(site)
	}
	reload(csReverseProxySite(addr, svc, ""))
	reload(csBalancerSite(addr, svc, ""))
	time.Sleep(500 * time.Millisecond)
	after := goroutines()
	t.Logf("goroutines in Caddy: %d before the reloads, %d after 11 more", before, after)
	if after > before+5 {
		t.Errorf("goroutines grew from %d to %d over 11 reloads", before, after)
	}
	csOpen(t, ctx, []*harness.Caddy{caddy}, 5)
	if got := csWaitLive(t, bs, 10); got[0] != 10 {
		t.Errorf("backend holds %d connections after the reloads, want 10 (5 from before)", got[0])
	}
}
