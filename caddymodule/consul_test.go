package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/consul"
	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

func TestMain(m *testing.M) { os.Exit(consuldev.Main(m)) }

func TestConsulCaddyfile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		input string
		want  ConsulConfig // when err is ""
		err   string       // substring of the expected error
	}{
		{
			name:  "service as argument",
			input: `consul echo`,
			want:  ConsulConfig{Service: "echo"},
		},
		{
			name: "every option",
			input: `consul {
				service     echo
				tag         blue
				address     https://consul.internal:8501
				scheme      https
				token       {env.CONSUL_HTTP_TOKEN}
				datacenter  dc2
				ca_file     /etc/consul/ca.pem
				ca_path     /etc/consul/ca
				cert_file   /etc/consul/client.pem
				key_file    /etc/consul/client.key
				tls_server_name consul.internal
				tls_insecure_skip_verify
				wait        30s
				consistency stale
			}`,
			want: ConsulConfig{
				Service: "echo", Tag: "blue", Address: "https://consul.internal:8501", Scheme: "https",
				Token: "{env.CONSUL_HTTP_TOKEN}", Datacenter: "dc2", CAFile: "/etc/consul/ca.pem", CAPath: "/etc/consul/ca",
				CertFile: "/etc/consul/client.pem", KeyFile: "/etc/consul/client.key", TLSServerName: "consul.internal",
				TLSInsecureSkipVerify: true, Wait: caddy.Duration(30 * time.Second), Consistency: "stale",
			},
		},
		{
			name:  "consistency default",
			input: "consul echo {\n consistency default\n}",
			want:  ConsulConfig{Service: "echo"},
		},
		{name: "no service", input: "consul {\n address 127.0.0.1:8500\n}", err: "service is required"},
		{name: "empty block", input: "consul {\n}", err: "service is required"},
		{name: "two services", input: `consul a b`, err: "wrong argument count"},
		{name: "service twice", input: "consul a {\n service b\n}", err: `option "service" given twice`},
		{name: "option twice", input: "consul {\n service a\n tag x\n tag y\n}", err: `option "tag" given twice`},
		{name: "unknown option", input: "consul {\n service a\n port 8500\n}", err: `unrecognized consul option "port"`},
		{name: "missing argument", input: "consul {\n service a\n address\n}", err: "wrong argument count"},
		{name: "extra argument", input: "consul {\n service a\n token x y\n}", err: "wrong argument count"},
		{name: "flag with argument", input: "consul {\n service a\n tls_insecure_skip_verify yes\n}", err: "wrong argument count"},
		{name: "bad scheme", input: "consul {\n service a\n scheme ftp\n}", err: `scheme "ftp" is not http or https`},
		{name: "bad consistency", input: "consul {\n service a\n consistency eventual\n}", err: `consistency "eventual"`},
		{name: "bad wait", input: "consul {\n service a\n wait soon\n}", err: `wait: "soon" is not a valid duration`},
		{name: "negative wait", input: "consul {\n service a\n wait -1s\n}", err: "not a valid duration"},
		{name: "wait too long", input: "consul {\n service a\n wait 11m\n}", err: "longer than Consul's maximum"},
		{name: "cert without key", input: "consul {\n service a\n cert_file /c.pem\n}", err: "cert_file and key_file go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// As the ws_balancer block calls it: positioned on "consul".
			d := caddyfile.NewTestDispenser(tc.input)
			d.Next()
			var src ConsulSource
			err := src.UnmarshalCaddyfile(d)
			// As reverse_proxy's dynamic calls it: on a fresh segment.
			var up ConsulUpstreams
			err2 := up.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("ws_balancer consul: error %v, want one containing %q", err, tc.err)
				}
				if err2 == nil || !strings.Contains(err2.Error(), tc.err) {
					t.Fatalf("dynamic consul: error %v, want one containing %q", err2, tc.err)
				}
				return
			}
			if err != nil || err2 != nil {
				t.Fatalf("unexpected errors: %v, %v", err, err2)
			}
			if src.ConsulConfig != tc.want {
				t.Errorf("ws_balancer consul:\n got %+v\nwant %+v", src.ConsulConfig, tc.want)
			}
			if up.ConsulConfig != tc.want {
				t.Errorf("dynamic consul:\n got %+v\nwant %+v", up.ConsulConfig, tc.want)
			}
		})
	}
}

// The consul block nested in ws_balancer consumes exactly its own tokens.
func TestConsulInWSBalancerBlock(t *testing.T) {
	t.Parallel()
	d := caddyfile.NewTestDispenser(`ws_balancer {
		consul echo {
			address 127.0.0.1:8500
			tag blue
		}
		max_conns 10
	}`)
	var h Handler
	if err := h.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if h.Consul == nil || h.Consul.Service != "echo" || h.Consul.Address != "127.0.0.1:8500" || h.Consul.Tag != "blue" {
		t.Fatalf("consul block: %+v", h.Consul)
	}
	if h.MaxConns != 10 {
		t.Errorf("max_conns after the consul block: %d", h.MaxConns)
	}
	b, err := json.Marshal(h.Consul)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(b); got != `{"address":"127.0.0.1:8500","service":"echo","tag":"blue"}` {
		t.Errorf("JSON %s", got)
	}

	d = caddyfile.NewTestDispenser("ws_balancer {\n consul {\n service a\n bogus\n }\n}")
	if err := new(Handler).UnmarshalCaddyfile(d); err == nil || !strings.Contains(err.Error(), `unrecognized consul option "bogus"`) {
		t.Errorf("bad option inside ws_balancer: %v", err)
	}
}

// reverse_proxy's Caddyfile finds both modules.
func TestConsulReverseProxyAdapt(t *testing.T) {
	t.Parallel()
	input := `:8080 {
	reverse_proxy {
		dynamic consul echo {
			address 127.0.0.1:8500
			consistency stale
		}
		lb_policy ws_least_conn
	}
}`
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"dynamic_upstreams":{"address":"127.0.0.1:8500","consistency":"stale","service":"echo","source":"consul"}`,
		`"selection_policy":{"policy":"ws_least_conn"}`,
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("adapted config lacks %s:\n%s", want, out)
		}
	}
	bad := strings.Replace(input, "lb_policy ws_least_conn", "lb_policy ws_least_conn extra", 1)
	if _, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(bad), nil); err == nil {
		t.Error("lb_policy ws_least_conn accepted an argument")
	}
}

func TestConsulResolvePlaceholders(t *testing.T) {
	t.Setenv("WSB_TEST_CONSUL_TOKEN", "from-env")
	t.Setenv("WSB_TEST_CONSUL_ADDR", "127.0.0.1:9999")
	cfg := ConsulConfig{Service: "echo", Token: "{env.WSB_TEST_CONSUL_TOKEN}", Address: "{env.WSB_TEST_CONSUL_ADDR}", Tag: "{env.WSB_UNSET_VAR}"}.resolve()
	if cfg.Token != "from-env" || cfg.Address != "127.0.0.1:9999" || cfg.Tag != "" {
		t.Errorf("resolved %+v", cfg)
	}
}

// sharedEcho registers one passing instance of a service of the test's own
// per port on the package's shared Consul agent (tests sharing it keep
// apart by service name, and by ports: backends are indexed by address
// package-wide). It returns the service name and a management client.
func sharedEcho(t *testing.T, ports ...int) (string, *api.Client) {
	t.Helper()
	c := consuldev.Shared(t).Client(t, "")
	svc := serviceName(t)
	for _, p := range ports {
		registerEcho(t, c, svc, p, nil)
	}
	return svc, c
}

// serviceName derives a Consul service name from the test's name.
func serviceName(t *testing.T) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
}

func registerEcho(t *testing.T, c *api.Client, svc string, port int, meta map[string]string) {
	t.Helper()
	id := svc + "-" + strconv.Itoa(port) // IDs are per agent
	err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
		ID: id, Name: svc, Address: "127.0.0.1", Port: port, Meta: meta,
		Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "1m", Status: api.HealthPassing},
	})
	if err != nil {
		t.Fatal(err)
	}
	// The shared agent outlives the test (and -count repeats it).
	t.Cleanup(func() { _ = c.Agent().ServiceDeregister(id) })
}

func testCaddyContext(t *testing.T) caddy.Context {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	return ctx
}

// Handlers with the same settings share one watch, across "reloads", and
// the last one to go stops it. A Front before the shared agent counts the
// health queries the handlers send.
func TestConsulSourceSharesWatcher(t *testing.T) {
	t.Parallel()
	svc, _ := sharedEcho(t, 7101, 7102)
	front := consuldev.NewFront(t, consuldev.Shared(t).Addr())
	cfg := ConsulConfig{Address: front.Addr(), Service: svc, Wait: caddy.Duration(10 * time.Second)}
	ctx := testCaddyContext(t)

	a := &ConsulSource{ConsulConfig: cfg}
	srcA, err := a.Start(ctx, usagePoolStore{}, 5)
	if err != nil {
		t.Fatal(err)
	}
	if ups := srcA.Upstreams(); len(ups) != 2 || ups[0].MaxConns != 5 {
		t.Fatalf("upstreams at start: %+v", ups)
	}
	b := &ConsulSource{ConsulConfig: cfg}
	srcB, err := b.Start(ctx, usagePoolStore{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if srcA.Upstreams()[0].Backend != srcB.Upstreams()[0].Backend {
		t.Error("the two handlers do not share backend state")
	}
	if a.watcher != b.watcher {
		t.Fatal("the two handlers run two watches")
	}
	key := a.watcher.key
	if n, _ := consulWatchers.References(key); n != 2 {
		t.Errorf("watch references = %d, want 2", n)
	}
	if consulBackends.lookup("127.0.0.1:7101") == nil {
		t.Error("backend not indexed for ws_least_conn")
	}
	health := "/v1/health/service/" + svc
	queries := front.Requests(health)
	if queries == 0 {
		t.Fatal("the Front counted no health queries: the watch does not go through it")
	}
	a.Stop()
	a.Stop() // idempotent
	if n, _ := consulWatchers.References(key); n != 1 {
		t.Errorf("watch references after one Stop = %d, want 1", n)
	}
	if n := front.Requests(health); n > queries+1 {
		t.Errorf("stopping one handler restarted the watch: %d health queries, %d before", n, queries)
	}
	w := b.watcher
	b.Stop()
	if _, ok := consulWatchers.References(key); ok {
		t.Error("watch still pooled after the last Stop")
	}
	if consulBackends.lookup("127.0.0.1:7101") != nil {
		t.Error("backend still indexed after the last Stop")
	}
	n, sent := w.Queries(), front.Requests(health)
	time.Sleep(100 * time.Millisecond)
	if w.Queries() != n || front.Requests(health) != sent {
		t.Error("watch still querying after the last Stop")
	}
	new(ConsulSource).Stop() // never started
}

// With ACLs on (default deny), a balancer whose token may read the service
// and its nodes watches it; without a token, with a token Consul does not
// know, or with one too weak, Start fails with ErrPermissionDenied.
func TestConsulSourceACL(t *testing.T) {
	t.Parallel()
	agent := consuldev.Start(t, consuldev.Options{ACL: true})
	const svc = "acl-echo"
	registerEcho(t, agent.Client(t, consuldev.ManagementToken), svc, 7201, nil)
	tests := []struct {
		name  string
		rules string // "" with token "": no token
		token string // a token Consul does not know, when set
		ok    bool
	}{
		{name: "balancer token", rules: consuldev.BalancerRules(svc), ok: true},
		{name: "no token"},
		{name: "wrong token", token: "4a6e8f1c-0000-4000-8000-000000000000"},
		// Without node:read, Consul filters every instance out instead of
		// refusing: the watcher must still say so.
		{name: "service read without node read", rules: `service "` + svc + `" { policy = "read" }`},
		{name: "another service's token", rules: consuldev.BalancerRules("other")},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			token := tt.token
			if tt.rules != "" {
				token = agent.Token(t, "balancer-"+strconv.Itoa(i), tt.rules)
			}
			ctx := testCaddyContext(t)
			src := &ConsulSource{ConsulConfig: ConsulConfig{Address: agent.Addr(), Service: svc, Token: token}}
			defer src.Stop()
			ups, err := src.Start(ctx, usagePoolStore{}, 0)
			if !tt.ok {
				if !errors.Is(err, consul.ErrPermissionDenied) || !strings.Contains(err.Error(), "consul: permission denied: check the token") {
					t.Fatalf("Start: %v, want ErrPermissionDenied", err)
				}
				t.Logf("Start: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if n := len(ups.Upstreams()); n != 1 {
				t.Fatalf("%d upstreams, want 1", n)
			}
		})
	}
	if _, err := (&ConsulSource{}).Start(testCaddyContext(t), usagePoolStore{}, 0); err == nil {
		t.Error("Start without a service succeeded")
	}
}

func TestConsulUpstreams(t *testing.T) {
	t.Parallel()
	svc, c := sharedEcho(t, 7301, 7302)
	registerEcho(t, c, svc, 7303, map[string]string{protocol.MetaDraining: "true"})
	ctx := testCaddyContext(t)
	cu := &ConsulUpstreams{ConsulConfig: ConsulConfig{Address: consuldev.Shared(t).Addr(), Service: svc}}
	if err := cu.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	defer cu.Cleanup()
	ups, err := cu.GetUpstreams(nil)
	if err != nil {
		t.Fatal(err)
	}
	var dials []string
	for _, u := range ups {
		dials = append(dials, u.Dial)
	}
	if strings.Join(dials, " ") != "127.0.0.1:7301 127.0.0.1:7302" {
		t.Errorf("upstreams %v, want 7301 and 7302 (7303 is draining)", dials)
	}
	again, _ := cu.GetUpstreams(nil)
	if again[0] == ups[0] {
		t.Error("GetUpstreams hands out the same Upstream twice; reverse_proxy fills them in per request")
	}
	// A new instance shows without a reload: the watch's blocking query
	// wakes on the registration. The deadline only bounds the test; the
	// figure is logged.
	registered := time.Now()
	registerEcho(t, c, svc, 7304, nil)
	deadline := registered.Add(10 * time.Second)
	for {
		ups, _ = cu.GetUpstreams(nil)
		if len(ups) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("new instance not seen within 10s: %d upstreams", len(ups))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("new instance among the upstreams %v after its registration", time.Since(registered).Round(time.Millisecond))
}

// rpUpstream is a reverse_proxy upstream ready for selection.
func rpUpstream(dial string) *reverseproxy.Upstream {
	return &reverseproxy.Upstream{Dial: dial, Host: new(reverseproxy.Host)}
}

func TestWSLeastConnSelect(t *testing.T) {
	t.Parallel()
	a, b, c := rpUpstream("a:1"), rpUpstream("b:1"), rpUpstream("c:1")
	pool := reverseproxy.UpstreamPool{a, b, c}
	requests := map[*reverseproxy.Upstream]int64{}
	reports := map[*reverseproxy.Upstream]*indexedBackend{}
	countOf := func(u *reverseproxy.Upstream) int64 { return requests[u] }
	reportOf := func(u *reverseproxy.Upstream) *indexedBackend { return reports[u] }
	now := time.Unix(1000, 0)
	report := func(u *reverseproxy.Upstream, conns, capacity int64, version uint64) {
		e := reports[u]
		if e == nil {
			e = &indexedBackend{Backend: balancer.NewBackend(u.Dial)}
			reports[u] = e
		}
		now = now.Add(time.Second)
		e.ObserveReport(balancer.Report{Connections: conns, Capacity: capacity, Version: version}, now)
	}
	pick := func() *reverseproxy.Upstream { return selectLeastLoaded(pool, countOf, reportOf) }

	// No reports: plain least_conn on this instance's counts.
	requests[a], requests[b], requests[c] = 3, 1, 2
	if got := pick(); got != b {
		t.Fatalf("no reports: picked %s, want b", got.Dial)
	}

	// Reports from all: the global count decides.
	report(a, 10, 0, 1)
	report(b, 30, 0, 1)
	report(c, 20, 0, 1)
	if got := pick(); got != a {
		t.Fatalf("reports 10/30/20: picked %s, want a", got.Dial)
	}
	// This instance sends 15 more to a after the report: a is at 25 now.
	requests[a] += 15
	if got := pick(); got != c {
		t.Fatalf("a at 10+15: picked %s, want c (20)", got.Dial)
	}
	// a's next report includes those 15: the baseline moves with it.
	report(a, 25, 0, 2)
	requests[c] += 10 // c at 30
	if got := pick(); got != a {
		t.Fatalf("a reported 25, c at 30: picked %s, want a", got.Dial)
	}
	// Connections counted in a report close: the count goes down.
	requests[b] -= 1 // b at 29
	requests[a] += 5 // a at 30
	if got := pick(); got != b {
		t.Fatalf("b at 29: picked %s, want b", got.Dial)
	}

	// A backend at the capacity it reports is skipped.
	report(b, 100, 100, 2)
	if got := pick(); got != a && got != c {
		t.Fatalf("b full: picked %s", got.Dial)
	}

	// One upstream without a report: back to local counts for all.
	delete(reports, c)
	requests[a], requests[b], requests[c] = 5, 5, 4
	if got := pick(); got != c {
		t.Fatalf("c unreported: picked %s, want c by local count", got.Dial)
	}

	// Ties are broken at random, not by order.
	reports = map[*reverseproxy.Upstream]*indexedBackend{}
	requests[a], requests[b], requests[c] = 2, 2, 2
	wins := map[*reverseproxy.Upstream]int{}
	for range 3000 {
		wins[pick()]++
	}
	for _, u := range pool {
		if wins[u] < 800 {
			t.Errorf("tie: %s won %d of 3000", u.Dial, wins[u])
		}
	}

	// An empty pool gives nil.
	if got := selectLeastLoaded(reverseproxy.UpstreamPool{}, countOf, reportOf); got != nil {
		t.Errorf("empty pool: %v", got)
	}
	if got := (WSLeastConnSelection{}).Select(reverseproxy.UpstreamPool{rpUpstream("z:1")}, nil, nil); got == nil {
		t.Error("Select over one upstream returned nil")
	}
	if dialAddr("tcp/127.0.0.1:80") != "127.0.0.1:80" || dialAddr("127.0.0.1:80") != "127.0.0.1:80" {
		t.Error("dialAddr")
	}
}
