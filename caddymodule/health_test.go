package caddymodule

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// The health_* options are reverse_proxy's, parsed by its own parser.
func TestUnmarshalHealthOptions(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        reverseproxy.ActiveHealthChecks // when err is ""
		err         string
	}{
		{
			name: "every option",
			input: `ws_balancer 127.0.0.1:1 {
				health_uri /healthz?full=1
				health_port 9200
				health_headers {
					Host backend.internal
					X-Probe {http.reverse_proxy.active.target_upstream}
				}
				health_method POST
				health_request_body "{\"ping\":1}"
				health_interval 1s
				health_timeout 500ms
				health_status 2xx
				health_body ^ok
				health_follow_redirects
				health_passes 2
				health_fails 3
				max_conns 5
			}`,
			want: reverseproxy.ActiveHealthChecks{
				URI: "/healthz?full=1", Port: 9200,
				Headers: http.Header{"Host": {"backend.internal"}, "X-Probe": {"{http.reverse_proxy.active.target_upstream}"}},
				Method:  "POST", Body: `{"ping":1}`, Interval: caddy.Duration(time.Second), Timeout: caddy.Duration(500 * time.Millisecond),
				ExpectStatus: 2, ExpectBody: "^ok", FollowRedirects: true, Passes: 2, Fails: 3,
			},
		},
		{
			name:  "health_upstream",
			input: "ws_balancer 127.0.0.1:1 {\n health_uri /h\n health_upstream 127.0.0.1:9300\n}",
			want:  reverseproxy.ActiveHealthChecks{URI: "/h", Upstream: "127.0.0.1:9300"},
		},
		{name: "missing uri", input: "ws_balancer {\n health_uri\n}", err: "wrong argument count"},
		{name: "bad interval", input: "ws_balancer {\n health_interval soon\n}", err: "bad interval value soon"},
		{name: "bad passes", input: "ws_balancer {\n health_passes many\n}", err: "invalid passes count 'many'"},
		{name: "bad status", input: "ws_balancer {\n health_status okay\n}", err: "bad status value 'okay'"},
		{name: "port after upstream", input: "ws_balancer {\n health_upstream h:1\n health_port 2\n}", err: "ignored if 'health_upstream' is used"},
		{name: "twice", input: "ws_balancer {\n health_uri /a\n health_uri /b\n}", err: `option "health_uri" given twice`},
		{name: "passive option", input: "ws_balancer {\n unhealthy_status 5xx\n}", err: `unrecognized subdirective "unhealthy_status"`},
		{name: "error names the line", input: "ws_balancer {\n\n health_fails x\n}", err: "Testfile:3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			if h.HealthChecks == nil || h.HealthChecks.Active == nil {
				t.Fatal("no active health checks")
			}
			if got := *h.HealthChecks.Active; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got  %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// probeRecorder is a backend's health endpoint that answers by path and
// remembers the last request.
type probeRecorder struct {
	mu   sync.Mutex
	last *http.Request
	body string
}

// startProbeRecorder serves a probeRecorder until the test ends and
// returns it with its address.
func startProbeRecorder(t *testing.T) (*probeRecorder, string) {
	rec := new(probeRecorder)
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	return rec, srv.Listener.Addr().String()
}

func (p *probeRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	p.last, p.body = r, string(b)
	p.mu.Unlock()
	switch r.URL.Path {
	case "/ok":
		io.WriteString(w, "status: green")
	case "/down":
		http.Error(w, "down", http.StatusServiceUnavailable)
	case "/moved":
		http.Redirect(w, r, "/ok", http.StatusFound)
	default:
		http.NotFound(w, r)
	}
}

// One probe, option by option, with reverse_proxy's meanings.
func TestHealthProbe(t *testing.T) {
	t.Parallel()
	rec, addr := startProbeRecorder(t)
	_, port, _ := net.SplitHostPort(addr)
	backend := &url.URL{Scheme: schemeWS, Host: addr}
	elsewhere := &url.URL{Scheme: schemeWS, Host: "127.0.0.1:1"} // nothing listens
	for _, tc := range []struct {
		name    string
		opts    string
		backend *url.URL
		err     string // "" for a pass
	}{
		{"2xx passes", "health_uri /ok", backend, ""},
		{"5xx fails", "health_uri /down", backend, "health check answered 503"},
		{"expected status", "health_uri /down\n health_status 503", backend, ""},
		{"expected class", "health_uri /ok\n health_status 3xx", backend, "answered 200"},
		{"body matches", "health_uri /ok\n health_body gr[e]+n", backend, ""},
		{"body does not match", "health_uri /ok\n health_body blue", backend, "does not match health_body"},
		{"redirect not followed", "health_uri /moved", backend, "answered 302"},
		{"redirect followed", "health_uri /moved\n health_follow_redirects", backend, ""},
		{"health_port", "health_uri /ok\n health_port " + port, elsewhere, ""},
		{"health_upstream", "health_uri /ok\n health_upstream " + addr, elsewhere, ""},
		{"connection refused", "health_uri /ok", elsewhere, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := provisionChecks(t, "ws_balancer 127.0.0.1:1 {\n "+tc.opts+"\n}", nil)
			wantError(t, c.probe(t.Context(), c.client(tc.backend), tc.backend), tc.err)
		})
	}

	// Method, body, headers (Host included) and placeholders.
	c := provisionChecks(t, `ws_balancer 127.0.0.1:1 {
		health_uri /ok?deep=1
		health_method POST
		health_request_body "{\"probe\":\"{http.reverse_proxy.active.target_upstream}\"}"
		health_headers {
			Host backend.internal
			X-Target {http.reverse_proxy.active.target_upstream}
		}
	}`, nil)
	if err := c.probe(t.Context(), c.client(backend), backend); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.last
	if r.Method != "POST" || r.URL.RequestURI() != "/ok?deep=1" || r.Host != "backend.internal" ||
		r.Header.Get("X-Target") != addr || rec.body != `{"probe":"`+addr+`"}` {
		t.Errorf("probe request: %s %s Host %q X-Target %q body %q", r.Method, r.URL, r.Host, r.Header.Get("X-Target"), rec.body)
	}
}

// provisionChecks parses a ws_balancer block and provisions its active
// health checks only.
func provisionChecks(t *testing.T, caddyfile string, tlsConfig *tls.Config) *healthChecks {
	t.Helper()
	h, _ := parseHandler(t, caddyfile, "")
	c, err := h.provisionHealthChecks(testCaddyContext(t), tlsConfig)
	if err != nil || c == nil {
		t.Fatalf("provisioning health checks: %v", err)
	}
	return c
}

// Handlers with the same settings share one checker per backend, across
// reloads; the last one to go stops it.
func TestHealthCheckersShared(t *testing.T) {
	t.Parallel()
	_, addr := startProbeRecorder(t)
	site := "ws_balancer " + addr + " {\n health_uri /down\n health_interval 1h\n}"
	h1 := provisionProxyHandler(t, site)
	h2 := provisionProxyHandler(t, site)
	h3 := provisionProxyHandler(t, strings.Replace(site, "/down", "/ok", 1))
	u1, u2, u3 := h1.source.Upstreams()[0], h2.source.Upstreams()[0], h3.source.Upstreams()[0]
	if u1.Active != u2.Active || u1.Active == u3.Active {
		t.Fatal("checkers: same settings must share one, other settings must not")
	}
	waitFor(t, "the first probe's verdict", func() bool { return !u1.Healthy(time.Now()) })
	if !u3.Healthy(time.Now()) || u1.State(time.Now()) != "down" {
		t.Errorf("states: %s (health_uri /down), %s (health_uri /ok)", u1.State(time.Now()), u3.State(time.Now()))
	}
	hc := checkerOf(t, u1)
	if n, _ := healthCheckers.References(hc.key); n != 2 {
		t.Errorf("checker references %d, want 2", n)
	}
	h1.Cleanup()
	if n, _ := healthCheckers.References(hc.key); n != 1 {
		t.Errorf("checker references after one cleanup %d, want 1", n)
	}
	h2.Cleanup()
	if _, ok := healthCheckers.References(hc.key); ok {
		t.Error("checker still pooled after the last cleanup")
	}
	select {
	case <-hc.done:
	default:
		t.Error("checker goroutine still running after the last cleanup")
	}
}

// checkerOf finds the pooled checker behind an upstream's verdict.
func checkerOf(t *testing.T, u *balancer.Upstream) *healthChecker {
	t.Helper()
	var found *healthChecker
	healthCheckers.Range(func(_, v any) bool {
		if hc := v.(*healthChecker); &hc.health == u.Active {
			found = hc
			return false
		}
		return true
	})
	if found == nil {
		t.Fatal("no checker")
	}
	return found
}

// A wss:// backend is probed over TLS with the handler's upstream TLS
// config: its private CA passes; without it, the probe fails.
func TestHealthCheckWSS(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ca")
	cert := ca.issue(t, dir, "backend", &x509.Certificate{IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
	srv := httptest.NewUnstartedServer(new(probeRecorder))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert.pair}}
	srv.StartTLS()
	defer srv.Close()
	backend := "wss://" + srv.Listener.Addr().String()
	good := provisionProxyHandler(t, fmt.Sprintf("ws_balancer %s {\n tls_trusted_ca_certs %s\n health_uri /ok\n health_interval 1h\n}", backend, ca.certFile))
	bad := provisionProxyHandler(t, fmt.Sprintf("ws_balancer %s {\n health_uri /ok\n health_interval 1h\n}", backend))
	waitFor(t, "the probe without the CA to fail", func() bool { return !bad.source.Upstreams()[0].Healthy(time.Now()) })
	if u := good.source.Upstreams()[0]; !u.Healthy(time.Now()) {
		t.Errorf("backend with its CA trusted: %s", u.State(time.Now()))
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// healthBackend is a WebSocket echo backend with a health endpoint that a
// test turns off and on, and that can refuse upgrades; it counts the
// upgrades it receives.
type healthBackend struct {
	addr     string
	failing  atomic.Bool  // /healthz answers 503
	refusing atomic.Bool  // upgrades are answered 503
	upgrades atomic.Int64 // upgrade requests received, refused ones included
	refused  atomic.Int64
	last     atomic.Int64 // when the last upgrade arrived, unix nanoseconds
}

func startHealthBackend(t *testing.T) *healthBackend {
	t.Helper()
	b := new(healthBackend)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/healthz" {
			if b.failing.Load() {
				http.Error(w, "failing", http.StatusServiceUnavailable)
			}
			return
		}
		b.upgrades.Add(1)
		b.last.Store(time.Now().UnixNano())
		if b.refusing.Load() {
			b.refused.Add(1)
			http.Error(w, "refusing", http.StatusServiceUnavailable)
			return
		}
		serveEcho(w, r)
	}))
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

// The acceptance test of active health checks, through real Caddy: with
// health_uri /healthz and health_interval 1s, a static backend whose
// health endpoint starts failing gets no new upgrades within 2s, none of
// the clients' upgrades is tried on it (and fails) after that, and it gets
// traffic again within 2s of recovering. Clients open (and hold) a
// connection every 10ms throughout; the figures are logged.
func TestHealthChecksThroughCaddy(t *testing.T) {
	a, b := startHealthBackend(t), startHealthBackend(t)
	base := runCaddy(t, func(port int) string {
		return fmt.Sprintf(`http://127.0.0.1:%d {
	ws_balancer /ws {
		backends %s %s
		health_uri /healthz
		health_interval 1s
		health_timeout 500ms
	}
}
`, port, a.addr, b.addr)
	})

	ctx, cancel := context.WithCancel(t.Context())
	var failures atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var conns []*websocket.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			c, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+base+"/ws", nil)
			if err != nil {
				if ctx.Err() == nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				continue
			}
			conns = append(conns, c)
		}
	}()
	stop := func() {
		cancel()
		wg.Wait()
	}
	defer stop()

	// At a random phase of the checks' ticker, so that the figures show
	// its spread rather than one point of it.
	time.Sleep(time.Second + rand.N(time.Second))
	if a.upgrades.Load() == 0 || b.upgrades.Load() == 0 {
		t.Fatalf("before the failure: upgrades %d and %d, want both", a.upgrades.Load(), b.upgrades.Load())
	}

	// a's health endpoint fails; it still serves upgrades for now.
	failedAt := time.Now()
	a.failing.Store(true)
	time.Sleep(2 * time.Second)
	lastBeforeRefusing := time.Unix(0, a.last.Load())
	quiet := lastBeforeRefusing.Sub(failedAt).Round(time.Millisecond)
	if quiet < 0 {
		quiet = 0
	}
	t.Logf("a's last upgrade came %v after its health endpoint started failing", quiet)
	if quiet >= 2*time.Second-50*time.Millisecond {
		t.Errorf("a still got upgrades %v after failing", quiet)
	}

	// From now on an upgrade tried on a would fail: none may be.
	a.refusing.Store(true)
	seen := a.upgrades.Load()
	time.Sleep(time.Second)
	if n := a.upgrades.Load() - seen; n != 0 {
		t.Errorf("%d upgrades tried on a after it was seen failing (%d refused)", n, a.refused.Load())
	}

	// a recovers, at a random phase too.
	time.Sleep(rand.N(time.Second))
	a.refusing.Store(false)
	seen = a.upgrades.Load()
	recoveredAt := time.Now()
	a.failing.Store(false)
	waitFor(t, "a to get traffic again", func() bool { return a.upgrades.Load() > seen })
	back := time.Since(recoveredAt).Round(time.Millisecond)
	t.Logf("a got traffic again %v after recovering", back)
	if back > 2*time.Second {
		t.Errorf("a got traffic again only %v after recovering", back)
	}
	stop()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d client upgrades failed, the first: %v", n, firstErr.Load())
	}
	t.Logf("upgrades: a %d (refused %d), b %d", a.upgrades.Load(), a.refused.Load(), b.upgrades.Load())
}
