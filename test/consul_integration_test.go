package test

// Consul discovery, end to end: real Caddy processes (ws_balancer with a
// consul block, or reverse_proxy with dynamic consul and lb_policy
// ws_least_conn), echo backends that register in the Consul test agent and
// publish their live connection count in their service meta, and WebSocket
// clients. Each test has its own agent, backends and Caddy processes.

import (
	"context"
	"fmt"
	"io"
	"net"
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

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

const csService = "ws-echo"

// csContext bounds a test.
func csContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// csStartAgent starts a test agent on loopback, closed with the test, and
// returns a client for it with its own transport.
func csStartAgent(t *testing.T, opts consultest.Options) (*consultest.Agent, *api.Client) {
	t.Helper()
	return consultest.StartTest(t, opts)
}

// csBackendOptions shape a csBackend.
type csBackendOptions struct {
	TTL                 time.Duration // the TTL check's; default 30s
	DeregisterAfter     time.Duration // deregister_critical_service_after; 0: none
	PublishEvery        time.Duration // at most one re-registration per; default 100ms
	ExtraMeta           map[string]string
	SkipInitialRegister bool
}

// csBackend is an echo backend registered in Consul that follows the load
// report protocol: it re-registers with ws_connections set to its live
// count when the count has changed (at most every PublishEvery), and passes
// its TTL check regularly, until frozen.
type csBackend struct {
	*harness.EchoBackend
	ID   string
	c    *api.Client
	opts csBackendOptions
	port int

	mu        sync.Mutex // held during each publish or heartbeat
	frozen    bool
	published int64
	writes    atomic.Int64

	stop chan struct{}
	done chan struct{}
}

func csStartBackend(t *testing.T, ctx context.Context, c *api.Client, id string, opts csBackendOptions) *csBackend {
	t.Helper()
	if opts.TTL == 0 {
		opts.TTL = 30 * time.Second
	}
	if opts.PublishEvery == 0 {
		opts.PublishEvery = 100 * time.Millisecond
	}
	echo := harness.StartEcho(t, harness.EchoOptions{})
	_, p, _ := net.SplitHostPort(echo.Addr)
	port, _ := strconv.Atoi(p)
	b := &csBackend{EchoBackend: echo, ID: id, c: c, opts: opts, port: port, stop: make(chan struct{}), done: make(chan struct{})}
	if !opts.SkipInitialRegister {
		if err := b.register(ctx, 0); err != nil {
			t.Fatalf("registering %s: %v", id, err)
		}
	}
	go b.run()
	t.Cleanup(func() { close(b.stop); <-b.done })
	return b
}

func (b *csBackend) register(ctx context.Context, conns int64) error {
	meta := map[string]string{wsbackend.MetaConnections: strconv.FormatInt(conns, 10)}
	for k, v := range b.opts.ExtraMeta {
		meta[k] = v
	}
	check := &api.AgentServiceCheck{CheckID: "ttl:" + b.ID, TTL: b.opts.TTL.String(), Status: api.HealthPassing}
	if b.opts.DeregisterAfter > 0 {
		check.DeregisterCriticalServiceAfter = b.opts.DeregisterAfter.String()
	}
	reg := &api.AgentServiceRegistration{
		ID: b.ID, Name: csService, Address: "127.0.0.1", Port: b.port, Meta: meta, Check: check,
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
	tick := time.NewTicker(b.opts.PublishEvery)
	defer tick.Stop()
	beatEvery := b.opts.TTL / 4
	lastBeat := time.Now()
	for {
		select {
		case <-b.stop:
			return
		case <-tick.C:
		}
		b.mu.Lock()
		if !b.frozen {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			// Errors (the agent down in the outage test) are retried on
			// the next tick.
			if live := b.Live(); live != b.published {
				if b.register(ctx, live) == nil {
					lastBeat = time.Now() // re-registering restarts the TTL
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

// csCaddy starts Caddy with siteBody. The harness fails the test if Caddy
// races (in a -race build), panics or ends abnormally.
func csCaddy(t *testing.T, siteBody string) *harness.Caddy {
	t.Helper()
	return harness.StartCaddy(t, siteBody)
}

// csConsulBlock is the consul options for a Caddyfile.
func csConsulBlock(addr, token, indent string) string {
	s := fmt.Sprintf("%s\taddress %s\n%s\tservice %s\n%s\twait 30s\n", indent, addr, indent, csService, indent)
	if token != "" {
		s += fmt.Sprintf("%s\ttoken %s\n", indent, token)
	}
	return s
}

// csBalancerSite is a site body with ws_balancer over Consul.
func csBalancerSite(addr, token string) string {
	return "\tws_balancer {\n\t\tconsul {\n" + csConsulBlock(addr, token, "\t\t") + "\t\t}\n\t}\n\trespond \"plain http\" 200\n"
}

// csReverseProxySite is a site body with stock reverse_proxy over Consul.
func csReverseProxySite(addr, token string) string {
	return "\treverse_proxy {\n\t\tdynamic consul {\n" + csConsulBlock(addr, token, "\t\t") +
		"\t\t}\n\t\tlb_policy ws_least_conn\n\t}\n"
}

// csOpen opens n connections one after the other, alternating between the
// Caddy instances, checks each with an echo and returns them (closed with
// the test).
func csOpen(t *testing.T, ctx context.Context, caddies []*harness.Caddy, n int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, 0, n)
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	for i := range n {
		c, resp, err := harness.Dial(ctx, caddies[i%len(caddies)].URL("/"), nil)
		if err != nil {
			status := ""
			if resp != nil {
				status = resp.Status
			}
			t.Fatalf("connection %d through caddy %d: %v %s", i, i%len(caddies), err, status)
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

// csSeen waits until every Caddy's admin API lists n backends, and returns
// how long that took.
func csSeen(t *testing.T, caddies []*harness.Caddy, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	ok := harness.WaitFor(t.Context(), within, func() bool {
		for _, c := range caddies {
			s, err := c.Backends()
			if err != nil {
				return false
			}
			up := 0
			for _, b := range s.Backends {
				if b.State != "removed" {
					up++
				}
			}
			if up != n {
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

// Acceptance 1 (ws_balancer) and 8 (reverse_proxy with ws_least_conn): two
// Caddy instances and three backends registered in the agent; 600
// connections opened alternately through both end 200 ± 20 per backend.
func TestConsulBalanceTwoInstancesWSBalancer(t *testing.T) {
	t.Parallel()
	csBalanceTwoInstances(t, csBalancerSite)
}

func TestConsulBalanceTwoInstancesReverseProxy(t *testing.T) {
	t.Parallel()
	csBalanceTwoInstances(t, csReverseProxySite)
}

func csBalanceTwoInstances(t *testing.T, site func(addr, token string) string) {
	ctx := csContext(t, 3*time.Minute)
	agent, c := csStartAgent(t, consultest.Options{CheckUpdateInterval: -1})
	var bs []*csBackend
	for i := range 3 {
		bs = append(bs, csStartBackend(t, ctx, c, "echo-"+strconv.Itoa(i), csBackendOptions{}))
	}
	caddies := []*harness.Caddy{
		csCaddy(t, site(agent.Addr(), "")),
		csCaddy(t, site(agent.Addr(), "")),
	}
	writes := agent.ServerWrites()
	start := time.Now()
	csOpen(t, ctx, caddies, 600)
	got := csWaitLive(t, bs, 600)
	t.Logf("600 connections in %s: per backend %v; %d registrations by the backends, %d server writes",
		time.Since(start).Round(time.Millisecond), got,
		bs[0].writes.Load()+bs[1].writes.Load()+bs[2].writes.Load(), agent.ServerWrites()-writes)
	for i, n := range got {
		if n < 180 || n > 220 {
			t.Errorf("backend %d holds %d connections, want 200 ± 20 (all: %v)", i, n, got)
		}
	}
}

// The reports make the choice global: a backend that already holds 100
// connections opened elsewhere (and says so in its meta) gets few of the
// next 200, whichever proxy module balances.
func TestConsulReportsSteerLoad(t *testing.T) {
	t.Parallel()
	for name, site := range map[string]func(addr, token string) string{
		"ws_balancer": csBalancerSite, "reverse_proxy": csReverseProxySite,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := csContext(t, 2*time.Minute)
			agent, c := csStartAgent(t, consultest.Options{CheckUpdateInterval: -1})
			var bs []*csBackend
			for i := range 3 {
				bs = append(bs, csStartBackend(t, ctx, c, "echo-"+strconv.Itoa(i), csBackendOptions{}))
			}
			// 100 connections straight to backend 0, past any balancer.
			for i := range 100 {
				conn, _, err := harness.Dial(ctx, "ws://"+bs[0].Addr+"/", nil)
				if err != nil {
					t.Fatalf("direct connection %d: %v", i, err)
				}
				t.Cleanup(func() { conn.Close() })
			}
			caddy := csCaddy(t, site(agent.Addr(), ""))
			if !harness.WaitFor(ctx, 5*time.Second, func() bool {
				entries, _, err := c.Health().Service(csService, "", true, nil)
				return err == nil && len(entries) == 3 && entries[0].Service.Meta[wsbackend.MetaConnections] != "" &&
					csMetaSum(entries) == 100
			}) {
				t.Fatal("backend 0 did not publish its 100 connections")
			}
			// Give the balancer's watch a moment to take the report in.
			time.Sleep(300 * time.Millisecond)
			csOpen(t, ctx, []*harness.Caddy{caddy}, 200)
			got := csWaitLive(t, bs, 300)
			t.Logf("after 100 direct and 200 balanced: %v", got)
			if got[0] > 110 {
				t.Errorf("backend 0 got %d of the balanced connections, want at most 10 (all: %v)", got[0]-100, got)
			}
		})
	}
}

func csMetaSum(entries []*api.ServiceEntry) int64 {
	var sum int64
	for _, e := range entries {
		n, _ := strconv.ParseInt(e.Service.Meta[wsbackend.MetaConnections], 10, 64)
		sum += n
	}
	return sum
}

// Acceptance 2: a backend that registers while 300 connections are held
// gets at least 80 of the next 100.
func TestConsulNewBackendTakesNext(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 2*time.Minute)
	agent, c := csStartAgent(t, consultest.Options{CheckUpdateInterval: -1})
	var bs []*csBackend
	for i := range 3 {
		bs = append(bs, csStartBackend(t, ctx, c, "echo-"+strconv.Itoa(i), csBackendOptions{}))
	}
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), "")),
		csCaddy(t, csBalancerSite(agent.Addr(), "")),
	}
	csOpen(t, ctx, caddies, 300)
	before := csWaitLive(t, bs, 300)

	bs = append(bs, csStartBackend(t, ctx, c, "echo-new", csBackendOptions{}))
	took := csSeen(t, caddies, 4, 5*time.Second)
	t.Logf("held %v; the new backend was listed by both instances %s after registering", before, took.Round(time.Millisecond))
	if took > time.Second {
		t.Errorf("new backend visible after %s, want within a second", took)
	}
	csOpen(t, ctx, caddies, 100)
	got := csWaitLive(t, bs, 400)
	t.Logf("after 100 more: %v", got)
	if got[3] < 80 {
		t.Errorf("the new backend got %d of the next 100, want at least 80 (all: %v)", got[3], got)
	}
}

// Acceptance 3: a backend that stops updating its TTL gets no new
// connection once TTL + 1s have passed, keeps the connections it has, and
// is deregistered after deregister_critical_service_after.
func TestConsulTTLExpiry(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 2*time.Minute)
	const (
		ttl        = 2 * time.Second
		deregister = 3 * time.Second
		reap       = 250 * time.Millisecond
	)
	agent, c := csStartAgent(t, consultest.Options{
		CheckUpdateInterval:        -1,
		MinDeregisterCriticalAfter: time.Second,
		ReapInterval:               reap,
	})
	opts := csBackendOptions{TTL: ttl, DeregisterAfter: deregister}
	good := csStartBackend(t, ctx, c, "echo-good", opts)
	hung := csStartBackend(t, ctx, c, "echo-hung", opts)
	caddies := []*harness.Caddy{
		csCaddy(t, csBalancerSite(agent.Addr(), "")),
		csCaddy(t, csBalancerSite(agent.Addr(), "")),
	}
	held := csOpen(t, ctx, caddies, 20)
	csWaitLive(t, []*csBackend{good, hung}, 20)

	if err := hung.Freeze(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	hungBefore := hung.Live()
	// Keep connecting: before the TTL runs out some go to the hung
	// backend; from TTL + 1s on none may.
	var late, lateToHung int
	for i := 0; time.Since(t0) < ttl+3*time.Second; i++ {
		n := hung.Live()
		conn, _, err := harness.Dial(ctx, caddies[i%2].URL("/"), nil)
		if err != nil {
			t.Fatalf("connection at +%s: %v", time.Since(t0), err)
		}
		held = append(held, conn)
		if err := harness.Echo(conn, "x", 5*time.Second); err != nil {
			t.Fatal(err)
		}
		if time.Since(t0) > ttl+time.Second {
			late++
			if hung.Live() > n {
				lateToHung++
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Cleanup(func() {
		for _, c := range held {
			c.Close()
		}
	})
	// Before the TTL runs out the hung backend still takes connections (more
	// than half: its frozen report hides what the other instance sent it).
	t.Logf("the hung backend took %d new connections before the TTL ran out; %d of %d after TTL+1s",
		hung.Live()-hungBefore-int64(lateToHung), lateToHung, late)
	if late == 0 || lateToHung != 0 {
		t.Errorf("%d of %d connections opened after TTL + 1s went to the hung backend", lateToHung, late)
	}
	// Its existing connections are left alone.
	for _, conn := range held[:20] {
		if err := harness.Echo(conn, "still here", 5*time.Second); err != nil {
			t.Fatalf("an existing connection broke: %v", err)
		}
	}

	// Deregistered after deregister_critical_service_after (counted from
	// when the check went critical), within a reaper round.
	if !harness.WaitFor(ctx, ttl+deregister+10*time.Second, func() bool {
		services, err := c.Agent().Services()
		_, still := services["echo-hung"]
		return err == nil && !still
	}) {
		t.Fatal("the hung backend was never deregistered")
	}
	gone := time.Since(t0)
	t.Logf("deregistered %s after its last TTL update (TTL %s + deregister after %s)", gone.Round(time.Millisecond), ttl, deregister)
	if gone < ttl+deregister-200*time.Millisecond || gone > ttl+deregister+time.Second+reap {
		t.Errorf("deregistered after %s, want about %s", gone, ttl+deregister)
	}
	if _, ok := (func() (any, bool) {
		services, _ := c.Agent().Services()
		s, ok := services["echo-good"]
		return s, ok
	})(); !ok {
		t.Error("the healthy backend was deregistered too")
	}
}

// csCountingProxy is a TCP proxy in front of the agent that counts the
// connections clients open: while the agent is down, each attempt of the
// balancer's watch is one connection.
type csCountingProxy struct {
	ln     net.Listener
	target string
	conns  atomic.Int64
	mu     sync.Mutex
	open   map[net.Conn]struct{}
	wg     sync.WaitGroup
}

func csStartProxy(t *testing.T, target string) *csCountingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &csCountingProxy{ln: ln, target: target, open: make(map[net.Conn]struct{})}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.close)
	return p
}

func (p *csCountingProxy) Addr() string { return p.ln.Addr().String() }

func (p *csCountingProxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.conns.Add(1)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.track(client, true)
			defer p.track(client, false)
			server, err := net.DialTimeout("tcp", p.target, time.Second)
			if err != nil {
				client.Close()
				return
			}
			p.track(server, true)
			defer p.track(server, false)
			done := make(chan struct{}, 2)
			go func() { io.Copy(server, client); server.Close(); done <- struct{}{} }()
			go func() { io.Copy(client, server); client.Close(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func (p *csCountingProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.open[c] = struct{}{}
	} else {
		c.Close()
		delete(p.open, c)
	}
}

func (p *csCountingProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.open {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// Acceptance 4: the agent is unreachable for 30s. The balancer keeps
// serving from the last known set, logs the outage once, retries with
// backoff (no hot loop) and picks up changes once the agent is back.
func TestConsulOutage(t *testing.T) {
	t.Parallel()
	const outage = 30 * time.Second
	ctx := csContext(t, 3*time.Minute)
	agent, c := csStartAgent(t, consultest.Options{CheckUpdateInterval: -1})
	proxy := csStartProxy(t, agent.Addr())
	opts := csBackendOptions{TTL: 5 * time.Minute} // TTLs keep running while the agent is unreachable
	bs := []*csBackend{
		csStartBackend(t, ctx, c, "echo-0", opts),
		csStartBackend(t, ctx, c, "echo-1", opts),
	}
	caddy := csCaddy(t, csBalancerSite(proxy.Addr(), ""))
	csOpen(t, ctx, []*harness.Caddy{caddy}, 10)

	if err := agent.Stop(); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	attemptsBefore := proxy.conns.Load()
	// Serving goes on from the last known set.
	time.Sleep(2 * time.Second)
	csOpen(t, ctx, []*harness.Caddy{caddy}, 20)
	got := csWaitLive(t, bs, 30)
	t.Logf("during the outage: 30 connections held as %v", got)
	if got[0] < 10 || got[1] < 10 {
		t.Errorf("during the outage the balancer served %v, want both known backends used", got)
	}
	time.Sleep(time.Until(t0.Add(outage)))
	attempts := proxy.conns.Load() - attemptsBefore
	t.Logf("%d connection attempts to Consul during the %s outage", attempts, outage)
	// Backoff from 500ms doubling to 10s, with jitter: about 8 attempts in
	// 30s. A hot loop would make thousands.
	if attempts < 3 || attempts > 15 {
		t.Errorf("%d attempts during a %s outage, want 3..15", attempts, outage)
	}
	if n := strings.Count(caddy.Log(), "consul query failed; keeping the last known backends"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}

	if err := agent.Restart(); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	bs = append(bs, csStartBackend(t, ctx, c, "echo-2", opts))
	took := csSeen(t, []*harness.Caddy{caddy}, 3, 15*time.Second)
	t.Logf("a backend registered after the agent came back was listed %s later", took.Round(time.Millisecond))
	if !harness.WaitFor(ctx, 5*time.Second, func() bool { return strings.Contains(caddy.Log(), "consul answers again") }) {
		t.Error("recovery not logged")
	}
	if n := strings.Count(caddy.Log(), "consul answers again"); n != 1 {
		t.Errorf("recovery logged %d times, want once", n)
	}
	csOpen(t, ctx, []*harness.Caddy{caddy}, 10)
	got = csWaitLive(t, bs, 40)
	t.Logf("10 more after the agent came back (%s ago): %v", time.Since(back).Round(time.Millisecond), got)
	if got[2] < 8 {
		t.Errorf("the new backend got %d of the 10 connections after the outage, want most", got[2])
	}
}

// csValidate runs `caddy validate` on a site body and returns its output
// and whether it passed.
func csValidate(t *testing.T, siteBody string) (string, bool) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("{\n\tadmin off\n\torder ws_balancer before respond\n\tauto_https off\n\tpersist_config off\n}\n\nhttp://127.0.0.1:%d {\n%s}\n",
		harness.FreePort(t), siteBody)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(harness.CaddyBinary(t), "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// Acceptance 5: with ACLs on, a wrong token is a clear error when the
// config is provisioned (at start and on reload); the right token works.
func TestConsulACL(t *testing.T) {
	t.Parallel()
	const token = "s3cret-management-token"
	ctx := csContext(t, 2*time.Minute)
	agent, c := csStartAgent(t, consultest.Options{ACLToken: token, CheckUpdateInterval: -1})
	bs := []*csBackend{csStartBackend(t, ctx, c, "echo-0", csBackendOptions{})}
	const want = "consul: permission denied: check the token"

	for name, site := range map[string]string{
		"ws_balancer wrong token":   csBalancerSite(agent.Addr(), "wrong-token"),
		"ws_balancer no token":      csBalancerSite(agent.Addr(), ""),
		"reverse_proxy wrong token": csReverseProxySite(agent.Addr(), "wrong-token"),
	} {
		out, ok := csValidate(t, site)
		if ok || !strings.Contains(out, want) {
			t.Errorf("%s: caddy validate passed=%v, output lacks %q:\n%s", name, ok, want, csLastLines(out, 5))
			continue
		}
		t.Logf("%s: %s", name, csLastLines(out, 1))
	}

	caddy := csCaddy(t, csBalancerSite(agent.Addr(), token))
	csOpen(t, ctx, []*harness.Caddy{caddy}, 3)
	if bs[0].Live() != 3 {
		t.Errorf("right token: backend holds %d connections, want 3", bs[0].Live())
	}
	err := caddy.Reload(csBalancerSite(agent.Addr(), "wrong-token"))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("reload with a wrong token: %v, want an error containing %q", err, want)
	}
	// The running config is untouched.
	csOpen(t, ctx, []*harness.Caddy{caddy}, 2)
	if err := caddy.Reload(csReverseProxySite(agent.Addr(), token)); err != nil {
		t.Errorf("reload with the right token: %v", err)
	}
	csOpen(t, ctx, []*harness.Caddy{caddy}, 2)
	if got := csWaitLive(t, bs, 7); got[0] != 7 {
		t.Errorf("backend holds %d connections, want 7", got[0])
	}
}

func csLastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Config reloads share the watch: no new watch (and no new query) per
// reload while the consul settings stay the same, one old watch stopped per
// change of settings, no goroutines left behind, connections kept.
func TestConsulReloads(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 2*time.Minute)
	agent, c := csStartAgent(t, consultest.Options{CheckUpdateInterval: -1})
	bs := []*csBackend{csStartBackend(t, ctx, c, "echo-0", csBackendOptions{PublishEvery: time.Hour})}
	caddy := csCaddy(t, csBalancerSite(agent.Addr(), ""))
	csOpen(t, ctx, []*harness.Caddy{caddy}, 5)
	path := "/v1/health/service/" + csService
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
	reload(csBalancerSite(agent.Addr(), "") + "\t# 0\n")
	time.Sleep(200 * time.Millisecond)
	before, queries := goroutines(), agent.Requests(path)
	for i := range 5 {
		reload(csBalancerSite(agent.Addr(), "") + fmt.Sprintf("\t# reload %d\n", i+1))
	}
	time.Sleep(200 * time.Millisecond)
	if q := agent.Requests(path) - queries; q > 1 {
		t.Errorf("5 reloads with the same consul settings made %d queries, want none (the watch is shared)", q)
	}
	// Changing the settings replaces the watch; alternate between two.
	for i := range 4 {
		site := csBalancerSite(agent.Addr(), "")
		if i%2 == 0 {
			site = strings.Replace(site, "wait 30s", "wait 20s", 1)
		}
		reload(site)
	}
	reload(csReverseProxySite(agent.Addr(), ""))
	reload(csBalancerSite(agent.Addr(), ""))
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
