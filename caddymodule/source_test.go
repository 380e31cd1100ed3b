package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

func TestUnmarshalSourceOptions(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		dynamic     string // the dynamic_backends JSON, when err is ""
		err         string
	}{
		{
			name:    "dynamic a",
			input:   "ws_balancer {\n dynamic a backends.internal 9101 {\n refresh 10s\n }\n}",
			dynamic: `{"name":"backends.internal","port":"9101","refresh":10000000000,"source":"a"}`,
		},
		{
			name:    "dynamic srv",
			input:   "ws_balancer {\n dynamic srv _ws._tcp.backends.internal\n}",
			dynamic: `{"name":"_ws._tcp.backends.internal","source":"srv"}`,
		},
		{
			name:    "dynamic multi",
			input:   "ws_balancer {\n dynamic multi {\n a one.internal 9101\n a two.internal 9101\n }\n}",
			dynamic: `{"source":"multi","sources":[{"name":"one.internal","port":"9101","source":"a"},{"name":"two.internal","port":"9101","source":"a"}]}`,
		},
		{
			name:    "dynamic consul",
			input:   "ws_balancer {\n dynamic consul chat {\n tag blue\n }\n}",
			dynamic: `{"service":"chat","source":"consul","tag":"blue"}`,
		},
		{name: "no module", input: "ws_balancer {\n dynamic\n}", err: "wrong argument count"},
		{name: "unknown module", input: "ws_balancer {\n dynamic nosuch x\n}", err: "http.reverse_proxy.upstreams.nosuch"},
		{name: "module error", input: "ws_balancer {\n dynamic a x 1 2\n}", err: "wrong argument count"},
		{name: "dynamic twice", input: "ws_balancer {\n dynamic a x 1\n dynamic a y 1\n}", err: `option "dynamic" given twice`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			if got := string(h.DynamicBackendsRaw); got != tc.dynamic {
				t.Errorf("dynamic_backends\n got %s\nwant %s", got, tc.dynamic)
			}
		})
	}
}

// Configurations that name their backends wrongly fail to provision or
// validate.
func TestSourceConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, input, err string }{
		{"none", "ws_balancer {\n max_conns 1\n}", "no backends configured"},
		{"static and dynamic", "ws_balancer 127.0.0.1:1 {\n dynamic a localhost 1\n}", "not several"},
		{"consul and dynamic", "ws_balancer {\n consul chat\n dynamic a localhost 1\n}", "not several"},
		{"static and consul", "ws_balancer 127.0.0.1:1 {\n consul chat\n}", "not several"},
		{"health checks without uri or port", "ws_balancer 127.0.0.1:1 {\n health_interval 1s\n}", "need health_uri"},
		{"negative health_interval", "ws_balancer 127.0.0.1:1 {\n health_uri /h\n health_interval -1s\n}", "health_interval must not be negative"},
		{"bad health_body", "ws_balancer 127.0.0.1:1 {\n health_uri /h\n health_body (\n}", "compiling health_body"},
		// Consul's backends have Consul's health checks. (An unreachable
		// agent: provisioning does not wait for it.)
		{"health checks with consul", "ws_balancer {\n consul chat {\n address 127.0.0.1:1\n }\n health_uri /h\n}", "Consul's backends keep Consul's health"},
		{"fine", "ws_balancer {\n dynamic a localhost 1\n health_uri /h\n}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := parseHandler(t, tc.input, "")
			ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
			defer cancel()
			err := h.Provision(ctx)
			if err == nil {
				err = h.Validate()
			}
			h.Cleanup()
			wantError(t, err, tc.err)
		})
	}
}

// wantError checks err against want: no error for "", else an error
// containing want.
func wantError(t *testing.T, err error, want string) {
	t.Helper()
	if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
		t.Errorf("error %v, want %q", err, want)
	}
}

// `dynamic a localhost <port>`: the balancer dials what the name resolves
// to (127.0.0.1 here, from /etc/hosts), with the port given.
func TestDynamicA(t *testing.T) {
	t.Parallel()
	backend := startEchoBackend(t, nil)
	_, port, _ := net.SplitHostPort(backend)
	h := provisionProxyHandler(t, "ws_balancer {\n dynamic a localhost "+port+" {\n versions ipv4\n }\n}")
	ups := h.source.Upstreams()
	if len(ups) != 1 || ups[0].URL.String() != "ws://"+backend || ups[0].ID != backend {
		t.Fatalf("upstreams %v, want ws://%s", upstreamURLs(ups), backend)
	}
	f := startFront(t, h)
	c, _, err := websocket.DefaultDialer.Dial(f.wsURL("/chat"), nil)
	if err != nil {
		t.Fatalf("dial: %v (handler: %v)", err, f.lastErr())
	}
	defer c.Close()
	echo(t, c, "resolved")
}

// Two A lookups through multi give two backends, which balance by this
// instance's live counts (they report none), and a second handler with
// the same source (a reload) finds their counts.
func TestDynamicMultiBalancesOverSharedCounts(t *testing.T) {
	t.Parallel()
	b1, b2 := startEchoBackend(t, nil), startEchoBackend(t, nil)
	_, p1, _ := net.SplitHostPort(b1)
	_, p2, _ := net.SplitHostPort(b2)
	site := fmt.Sprintf("ws_balancer {\n dynamic multi {\n a localhost %s\n a localhost %s\n }\n}", p1, p2)
	h1 := provisionProxyHandler(t, site)
	f := startFront(t, h1)
	for i := range 10 {
		c, _, err := websocket.DefaultDialer.Dial(f.wsURL("/"), nil)
		if err != nil {
			t.Fatalf("dial %d: %v (handler: %v)", i, err, f.lastErr())
		}
		defer c.Close()
		echo(t, c, "hello")
	}
	live := func(h *Handler) map[string]int64 {
		m := map[string]int64{}
		for _, u := range h.source.Upstreams() {
			m[u.Addr()] = u.Live()
		}
		return m
	}
	if got := live(h1); got[b1] != 5 || got[b2] != 5 {
		t.Fatalf("live counts %v, want 5 on each of %s and %s", got, b1, b2)
	}
	h2 := provisionProxyHandler(t, site)
	if got := live(h2); got[b1] != 5 || got[b2] != 5 {
		t.Errorf("the reloaded handler sees %v, want the 5 and 5 of the first", got)
	}
	h1.Cleanup()
	if got := live(h2); got[b1] != 5 || got[b2] != 5 {
		t.Errorf("after the first handler's cleanup: %v", got)
	}
}

// fakeUpstreams is an upstream source module whose answer the test sets.
type fakeUpstreams struct {
	mu    sync.Mutex
	dials []string
	err   error
	reqs  int
}

func (f *fakeUpstreams) set(err error, dials ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.dials, f.err = dials, err
}

func (f *fakeUpstreams) GetUpstreams(r *http.Request) ([]*reverseproxy.Upstream, error) {
	if _, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); !ok {
		return nil, errors.New("no replacer in the request") // SRV and A need one
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs++
	if f.err != nil {
		return nil, f.err
	}
	out := make([]*reverseproxy.Upstream, 0, len(f.dials))
	for _, d := range f.dials {
		out = append(out, &reverseproxy.Upstream{Dial: d})
	}
	return out, nil
}

// A poll maps dial addresses to ws:// (or wss://) upstreams over the shared
// store, keeps the Backends of upstreams that stay, releases those that
// leave, keeps the last set on errors, and stops.
func TestPollFollowsSource(t *testing.T) {
	t.Parallel()
	store := balancer.NewBackendStore()
	set := &backendSet{store: store, maxConns: 7}
	fake := new(fakeUpstreams)
	fake.set(nil, "127.0.0.1:7001", "tcp4/127.0.0.1:7002", "unix//run/x.sock", "127.0.0.1:7001", "{bad}")
	ctx := testCaddyContext(t)
	p := startPoll(ctx, fake, set, schemeWSS, zap.NewNop())
	defer p.stop()
	ups := set.pool.Upstreams()
	if got := strings.Join(upstreamURLs(ups), " "); got != "wss://127.0.0.1:7001 wss://127.0.0.1:7002" {
		t.Fatalf("upstreams %s", got)
	}
	if ups[0].MaxConns != 7 {
		t.Errorf("max_conns %d, want 7", ups[0].MaxConns)
	}
	first := ups[0].Backend

	fake.set(errors.New("lookup failed"))
	p.refresh(ctx)
	if len(set.pool.Upstreams()) != 2 {
		t.Errorf("an error emptied the set: %v", upstreamURLs(set.pool.Upstreams()))
	}

	fake.set(nil, "127.0.0.1:7001", "127.0.0.1:7003")
	p.refresh(ctx)
	ups = set.pool.Upstreams()
	if got := strings.Join(upstreamURLs(ups), " "); got != "wss://127.0.0.1:7001 wss://127.0.0.1:7003" {
		t.Fatalf("after the change: %s", got)
	}
	if ups[0].Backend != first || store.Acquire("127.0.0.1:7001") != first {
		t.Error("the backend that stayed got new state")
	}
	store.Release("127.0.0.1:7001")

	// The background poll sees the next change within about a second.
	fake.set(nil, "127.0.0.1:7004")
	deadline := time.Now().Add(5 * time.Second)
	for len(set.pool.Upstreams()) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("poll did not pick up the change: %v", upstreamURLs(set.pool.Upstreams()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	p.stop()
	fake.mu.Lock()
	n := fake.reqs
	fake.mu.Unlock()
	time.Sleep(1200 * time.Millisecond)
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if fake.reqs != n {
		t.Error("polling went on after stop")
	}
}

func upstreamURLs(ups []*balancer.Upstream) []string {
	var out []string
	for _, u := range ups {
		out = append(out, u.URL.String())
	}
	return out
}

// The handler's Cleanup stops the poll and releases the backends.
func TestDynamicCleanupReleases(t *testing.T) {
	t.Parallel()
	h, _ := parseHandler(t, "ws_balancer {\n dynamic a localhost 7401\n}", "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := backendStates.References("127.0.0.1:7401"); !ok {
		t.Fatal("backend not held")
	}
	h.Cleanup()
	if n, ok := backendStates.References("127.0.0.1:7401"); ok {
		t.Errorf("backend still held after Cleanup: %d references", n)
	}
}

// The consul block and `dynamic consul` are one module: both give the
// handler Consul's passing instances with their load reports, with the
// handler's max_conns, dialled over TLS when tls options are given.
func TestConsulSourcesInWSBalancer(t *testing.T) {
	t.Parallel()
	agent := consuldev.Start(t, consuldev.Options{})
	c := agent.Client(t, "")
	for port, count := range map[int]string{7501: "3", 7502: "1"} {
		id := fmt.Sprintf("chat-%d", port)
		err := c.Agent().ServiceRegister(&api.AgentServiceRegistration{
			ID: id, Name: "chat", Address: "127.0.0.1", Port: port,
			Meta:  map[string]string{protocol.MetaConnections: count},
			Check: &api.AgentServiceCheck{CheckID: "ttl:" + id, TTL: "1m", Status: api.HealthPassing},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	block := "chat {\n address " + agent.Addr() + "\n }"
	for _, tc := range []struct {
		name, site string
		maxConns   int64
		scheme     string
	}{
		{"consul block", "ws_balancer {\n consul " + block + "\n max_conns 5\n}", 5, "ws"},
		{"dynamic consul", "ws_balancer {\n dynamic consul " + block + "\n}", 0, "ws"},
		{"wss", "ws_balancer {\n consul " + block + "\n tls_server_name chat.internal\n}", 0, "wss"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := provisionProxyHandler(t, tc.site)
			waitFor(t, "both instances", func() bool { return len(h.source.Upstreams()) == 2 })
			loads := map[string]int64{}
			for _, u := range h.source.Upstreams() {
				if u.MaxConns != tc.maxConns || u.URL.Scheme != tc.scheme {
					t.Errorf("%s: max_conns %d, scheme %s; want %d, %s", u.ID, u.MaxConns, u.URL.Scheme, tc.maxConns, tc.scheme)
				}
				loads[u.Addr()] = u.Load()
			}
			if loads["127.0.0.1:7501"] != 3 || loads["127.0.0.1:7502"] != 1 {
				t.Errorf("loads %v, want the reported 3 and 1", loads)
			}
		})
	}
}
