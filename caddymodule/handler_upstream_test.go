package caddymodule

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/gorilla/websocket"
)

func TestUnmarshalUpstreamOptions(t *testing.T) {
	for _, tc := range []struct {
		name, input string
		want        string // the handler's tls and headers as JSON
		err         string
	}{
		{
			name: "headers: set, add, delete, replace; repeatable",
			input: `ws_balancer 127.0.0.1:1 {
				header_up X-Tenant {http.request.host}
				header_up +X-Trace one
				header_up -Cookie
				header_up X-Path ^/a /b
				header_down -Server
				header_down X-Balanced yes
			}`,
			want: `{"headers":{"request":{"add":{"X-Trace":["one"]},"set":{"X-Tenant":["{http.request.host}"]},"delete":["Cookie"],` +
				`"replace":{"X-Path":[{"search_regexp":"^/a","replace":"/b"}]}},"response":{"set":{"X-Balanced":["yes"]},"delete":["Server"]}}}`,
		},
		{
			name: "tls: CA files, client certificate, server name",
			input: `ws_balancer wss://10.0.0.1:443 {
				tls_trusted_ca_certs /etc/ca.pem /etc/ca2.pem
				tls_client_auth /etc/client.pem /etc/client.key
				tls_server_name backend.internal
			}`,
			want: `{"tls":{"ca":{"pem_files":["/etc/ca.pem","/etc/ca2.pem"],"provider":"file"},` +
				`"client_certificate_file":"/etc/client.pem","client_certificate_key_file":"/etc/client.key","server_name":"backend.internal"}}`,
		},
		{
			name: "tls: trust pool module, automated client certificate, skip verify",
			input: `ws_balancer wss://10.0.0.1:443 {
				tls_trust_pool file {
					pem_file /etc/ca.pem
				}
				tls_client_auth balancer.internal
				tls_insecure_skip_verify
			}`,
			want: `{"tls":{"ca":{"pem_files":["/etc/ca.pem"],"provider":"file"},"client_certificate_automate":"balancer.internal","insecure_skip_verify":true}}`,
		},
		{name: "header_up without field", input: "ws_balancer {\n header_up\n}", err: "wrong argument count"},
		{name: "header_down with four arguments", input: "ws_balancer {\n header_down a b c d\n}", err: "wrong argument count"},
		{name: "default modifier on a request header", input: "ws_balancer {\n header_up ?X-A b\n}", err: "only be used on response headers"},
		{name: "CA files missing", input: "ws_balancer {\n tls_trusted_ca_certs\n}", err: "wrong argument count"},
		{name: "both trust options", input: "ws_balancer {\n tls_trusted_ca_certs /a.pem\n tls_trust_pool file /b.pem\n}", err: "not both"},
		{name: "unknown trust pool", input: "ws_balancer {\n tls_trust_pool teapot\n}", err: "teapot"},
		{name: "client auth with three files", input: "ws_balancer {\n tls_client_auth a b c\n}", err: "wrong argument count"},
		{name: "server name twice", input: "ws_balancer {\n tls_server_name a\n tls_server_name b\n}", err: "given twice"},
		{name: "server name with two values", input: "ws_balancer {\n tls_server_name a b\n}", err: "wrong argument count"},
		{name: "skip verify with a value", input: "ws_balancer {\n tls_insecure_skip_verify yes\n}", err: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			got, err := json.Marshal(struct {
				TLS     any `json:"tls,omitempty"`
				Headers any `json:"headers,omitempty"`
			}{nilIfNil(h.TLS), nilIfNil(h.Headers)})
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestValidateUpstreamOptions(t *testing.T) {
	for _, tc := range []struct{ name, input, err string }{
		{"TLS options with no wss backend", "ws_balancer 127.0.0.1:1 {\n tls_server_name a\n}", "no backend is wss://"},
		{"TLS options in assign mode", "ws_balancer wss://h:1 {\n mode assign\n token_key k\n tls_insecure_skip_verify\n}", "mode assign"},
		{"headers in assign mode", "ws_balancer wss://h:1 {\n mode assign\n token_key k\n header_up X-A b\n}", "mode assign"},
		{"TLS options with a wss backend among others", "ws_balancer 127.0.0.1:1 wss://h:1 {\n tls_server_name a\n}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := parseHandler(t, tc.input, "")
			wantError(t, h.validateUpstream(), tc.err)
		})
	}
}

// A wss:// backend behind a private CA, with a certificate for a name that is
// not its address, or requiring a client certificate: the tls_* options make
// it work, and without them the upgrade fails with 502 and an error saying
// what TLS refused.
func TestWSSBackendTLSOptions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ca := newTestCA(t, dir, "ws balancer test CA")
	clientCA := newTestCA(t, dir, "client CA")
	ipCert := ca.issue(t, dir, "backend-ip", &x509.Certificate{
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	nameCert := ca.issue(t, dir, "backend-name", &x509.Certificate{
		DNSNames: []string{"backend.internal"}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	client := clientCA.issue(t, dir, "balancer", &x509.Certificate{
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	mtls := &tls.Config{
		Certificates: []tls.Certificate{ipCert.pair}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA.pool(),
	}
	// Each case gets a backend of its own: backend state (a failed one
	// rests for fail_duration) is shared by address across handlers.
	backends := map[string]*tls.Config{
		"ip":   {Certificates: []tls.Certificate{ipCert.pair}},
		"name": {Certificates: []tls.Certificate{nameCert.pair}},
		"mtls": mtls,
	}

	for _, tc := range []struct {
		name, backend, options string
		err                    string // "" = the connection echoes
	}{
		{"private CA without tls_trusted_ca_certs", "ip", "", "x509: certificate signed by unknown authority"},
		{"private CA in tls_trusted_ca_certs", "ip", "tls_trusted_ca_certs " + ca.certFile, ""},
		{"private CA in tls_trust_pool", "ip", "tls_trust_pool file " + ca.certFile, ""},
		{"tls_insecure_skip_verify, for testing", "ip", "tls_insecure_skip_verify", ""},
		{"certificate for another name", "name", "tls_trusted_ca_certs " + ca.certFile, "cannot validate certificate for 127.0.0.1"},
		{"tls_server_name names the certificate's host", "name", "tls_trusted_ca_certs " + ca.certFile + "\ntls_server_name backend.internal", ""},
		{"client certificate required but not given", "mtls", "tls_trusted_ca_certs " + ca.certFile, "tls: certificate required"},
		{"client certificate from tls_client_auth", "mtls", "tls_trusted_ca_certs " + ca.certFile +
			"\ntls_client_auth " + client.certFile + " " + client.keyFile, ""},
		{"client certificate the backend does not trust", "mtls", "tls_trusted_ca_certs " + ca.certFile +
			"\ntls_client_auth " + ipCert.certFile + " " + ipCert.keyFile, "tls: certificate required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			backend := startEchoBackend(t, backends[tc.backend].Clone())
			h := provisionProxyHandler(t, fmt.Sprintf("ws_balancer %s {\n%s\n}", backend, tc.options))
			front := startFront(t, h)
			c, resp, err := websocket.DefaultDialer.DialContext(ctx, front.wsURL("/ws"), nil)
			if tc.err == "" {
				if err != nil {
					t.Fatalf("dial: %v (handler: %v)", err, front.lastErr())
				}
				defer c.Close()
				echo(t, c, "over private TLS")
				return
			}
			if err == nil {
				c.Close()
				t.Fatal("connected")
			}
			if resp == nil || resp.StatusCode != http.StatusBadGateway {
				t.Errorf("answer %v, want 502", resp)
			}
			// This error is what Caddy logs for the request.
			if herr := front.lastErr(); herr == nil || !strings.Contains(herr.Error(), tc.err) {
				t.Errorf("handler error %v, want one saying %q", herr, tc.err)
			}
		})
	}
}

// Headers named in the client's Connection header stay on the first hop,
// with or without header operations; header_up values take the request's
// placeholders; header_down edits the 101. The upgrade itself always goes
// through.
func TestUpgradeHeaders(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		options   string
		wantUp    map[string]string // "" = absent
		wantDown  map[string]string
		wantHost  string
		wantFinal string
	}{
		{
			name: "no header operations",
			wantUp: map[string]string{
				"Connection": "Upgrade", "Upgrade": "websocket", "X-Hop": "", "Keep-Alive": "",
				"X-Remove": "gone", "X-Forwarded-Host": "tenant-7.example:8443",
			},
			wantDown: map[string]string{"Server": "backend/1.0", "X-Backend-Hop": ""},
			wantHost: "tenant-7.example:8443",
		},
		{
			name: "header_up and header_down",
			options: `header_up X-Tenant {http.request.host}
				header_up +X-Added one
				header_up -X-Remove
				header_up Host {http.reverse_proxy.upstream.hostport}
				header_down -Server
				header_down X-Balanced {http.request.host}`,
			wantUp: map[string]string{
				"Connection": "Upgrade", "Upgrade": "websocket", "X-Hop": "", "Keep-Alive": "",
				"X-Tenant": "tenant-7.example", "X-Added": "one", "X-Remove": "",
			},
			wantDown: map[string]string{"Server": "", "X-Balanced": "tenant-7.example", "X-Backend-Hop": ""},
			wantHost: "backend", // the backend's own address, below
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := make(chan *http.Request, 1)
			up := websocket.Upgrader{}
			be := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got <- r
				c, err := up.Upgrade(w, r, http.Header{
					"Server": {"backend/1.0"}, "Connection": {"X-Backend-Hop"}, "X-Backend-Hop": {"internal"},
				})
				if err == nil {
					c.Close()
				}
			}))
			t.Cleanup(be.Close)
			backend := be.Listener.Addr().String()
			h := provisionProxyHandler(t, fmt.Sprintf("ws_balancer %s {\n%s\n}", backend, tc.options))
			front := startFront(t, h)

			conn, err := net.DialTimeout("tcp", front.addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			io.WriteString(conn, "GET /ws HTTP/1.1\r\nHost: tenant-7.example:8443\r\n"+
				"Connection: Upgrade, X-Hop\r\nUpgrade: websocket\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"+
				"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Remove: gone\r\n\r\n")
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatalf("reading the answer: %v (handler: %v)", err, front.lastErr())
			}
			if resp.StatusCode != http.StatusSwitchingProtocols ||
				resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" ||
				resp.Header.Get("Connection") != "Upgrade" || resp.Header.Get("Upgrade") != "websocket" {
				t.Fatalf("answer %d %v, want a 101 completing the handshake", resp.StatusCode, resp.Header)
			}
			for name, want := range tc.wantDown {
				if v := resp.Header.Get(name); v != want {
					t.Errorf("101 %s = %q, want %q", name, v, want)
				}
			}
			r := <-got
			for name, want := range tc.wantUp {
				if v := strings.Join(r.Header.Values(name), ","); v != want {
					t.Errorf("backend got %s = %q, want %q", name, v, want)
				}
			}
			if want := strings.Replace(tc.wantHost, "backend", backend, 1); r.Host != want {
				t.Errorf("backend got Host %q, want %q", r.Host, want)
			}
		})
	}
}

// nilIfNil is p, or an untyped nil for omitempty to omit.
func nilIfNil[T any](p *T) any {
	if p == nil {
		return nil
	}
	return p
}

// provisionProxyHandler parses a ws_balancer block and provisions and
// validates the handler, which is cleaned up with the test.
func provisionProxyHandler(t *testing.T, caddyfile string) *Handler {
	t.Helper()
	h, _ := parseHandler(t, caddyfile, "")
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		h.Cleanup()
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
	return &h
}

// front is an HTTP server passing requests to a handler the way Caddy's
// server does (client IP var, replacer), answering errors with their status
// and remembering the last one.
type front struct {
	addr string
	mu   sync.Mutex
	err  error
}

func startFront(t *testing.T, h *Handler) *front {
	f := new(front)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vars := map[string]any{caddyhttp.ClientIPVarKey: "127.0.0.1"}
		r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, vars))
		caddyhttp.NewTestReplacer(r)
		err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) error {
			w.Write([]byte("next"))
			return nil
		}))
		if err != nil {
			f.mu.Lock()
			f.err = err
			f.mu.Unlock()
			var he caddyhttp.HandlerError
			if errors.As(err, &he) {
				w.WriteHeader(he.StatusCode)
			}
		}
	}))
	t.Cleanup(srv.Close)
	f.addr = srv.Listener.Addr().String()
	return f
}

func (f *front) wsURL(path string) string { return "ws://" + f.addr + path }

func (f *front) lastErr() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

// startEchoBackend starts a WebSocket echo server, over TLS with cfg if it
// is not nil, and returns its address as a backend: host:port, or a wss://
// URL.
func startEchoBackend(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(serveEcho))
	t.Cleanup(srv.Close)
	if cfg == nil {
		srv.Start()
		return srv.Listener.Addr().String()
	}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
	srv.TLS = cfg
	srv.StartTLS()
	return "wss://" + srv.Listener.Addr().String()
}

// serveEcho upgrades a request and echoes its messages.
func serveEcho(w http.ResponseWriter, r *http.Request) {
	c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil || c.WriteMessage(mt, msg) != nil {
			return
		}
	}
}

func echo(t *testing.T, c *websocket.Conn, msg string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_, got, err := c.ReadMessage()
	if err != nil || string(got) != msg {
		t.Fatalf("echo: %q %v, want %q", got, err, msg)
	}
}

// testCA is a private certificate authority, its certificate in certFile.
type testCA struct {
	cert     *x509.Certificate
	key      *ecdsa.PrivateKey
	certFile string
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, certFile: filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".pem")}
	writePEM(t, ca.certFile, "CERTIFICATE", der)
	return ca
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issuedCert is a certificate and its key, in memory and in files.
type issuedCert struct {
	pair              tls.Certificate
	certFile, keyFile string
}

// issue signs tmpl (its names and key usages) for a new key.
func (ca *testCA) issue(t *testing.T, dir, name string, tmpl *x509.Certificate) issuedCert {
	t.Helper()
	key := newKey(t)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber, tmpl.Subject = serial, pkix.Name{CommonName: name}
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c := issuedCert{certFile: filepath.Join(dir, name+".pem"), keyFile: filepath.Join(dir, name+".key")}
	writePEM(t, c.certFile, "CERTIFICATE", der)
	writePEM(t, c.keyFile, "PRIVATE KEY", keyDER)
	if c.pair, err = tls.LoadX509KeyPair(c.certFile, c.keyFile); err != nil {
		t.Fatal(err)
	}
	return c
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
