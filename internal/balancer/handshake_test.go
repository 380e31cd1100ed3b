package balancer

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

func TestParseBackendURL(t *testing.T) {
	for _, tc := range []struct{ in, want, err string }{
		{"127.0.0.1:9101", "ws://127.0.0.1:9101", ""},
		{"ws://127.0.0.1:9101/chat", "ws://127.0.0.1:9101/chat", ""},
		{"wss://example.com/ws", "wss://example.com:443/ws", ""},
		{"http://h:1", "ws://h:1", ""},
		{"ws://h", "ws://h:80", ""},
		{"[::1]:9000", "ws://[::1]:9000", ""},
		{"ftp://h:1", "", "scheme"},
		{"ws://:80", "", "missing host"},
		{"ws://u:p@h:1", "", "user info"},
		{"h:0", "", "invalid port"},
		{"h:70000", "", "out of range"},
		{"h:abc", "", "parsing"},
	} {
		u, err := ParseBackendURL(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want one mentioning %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || u.String() != tc.want {
			t.Errorf("%q: got %v %v, want %s", tc.in, u, err, tc.want)
		}
	}
}

func TestAppendTargetURI(t *testing.T) {
	for _, tc := range []struct{ backend, req, want string }{
		{"ws://h:1", "/ws?a=1", "/ws?a=1"},
		{"ws://h:1/", "/ws", "/ws"},
		{"ws://h:1/base", "/ws", "/base/ws"},
		{"ws://h:1/base/", "/ws", "/base/ws"},
		{"ws://h:1/base?k=v", "/ws?a=1", "/base/ws?k=v&a=1"},
		{"ws://h:1", "/a%2Fb", "/a%2Fb"},
	} {
		u, err := ParseBackendURL(tc.backend)
		if err != nil {
			t.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodGet, tc.req, nil)
		if got := string(appendTargetURI(nil, &Upstream{URL: u}, r)); got != tc.want {
			t.Errorf("%s + %s = %s, want %s", tc.backend, tc.req, got, tc.want)
		}
	}
}

func TestCheckUpgrade(t *testing.T) {
	valid := func() *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.Header.Set("Connection", "keep-alive, Upgrade")
		r.Header.Set("Upgrade", "WebSocket")
		r.Header.Set("Sec-WebSocket-Version", "13")
		r.Header.Set("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
		return r
	}
	if !protocol.IsUpgrade(valid()) || checkUpgrade(valid()) != nil {
		t.Fatal("valid upgrade refused")
	}
	for _, tc := range []struct {
		name   string
		mutate func(r *http.Request)
		status int
	}{
		{"version 8", func(r *http.Request) { r.Header.Set("Sec-WebSocket-Version", "8") }, 426},
		{"no key", func(r *http.Request) { r.Header.Del("Sec-WebSocket-Key") }, 400},
		{"POST", func(r *http.Request) { r.Method = http.MethodPost }, 405},
	} {
		r := valid()
		tc.mutate(r)
		if e := checkUpgrade(r); e == nil || e.Status != tc.status {
			t.Errorf("%s: %v, want status %d", tc.name, e, tc.status)
		}
	}
	r := valid()
	r.Header.Set("Upgrade", "h2c")
	if protocol.IsUpgrade(r) {
		t.Error("h2c upgrade taken for WebSocket")
	}
}

// The upstream request keeps end-to-end headers, drops hop-by-hop ones and
// cannot be split by CR/LF in a value.
func TestWriteUpgradeRequest(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "http://site.example/ws?q=1", nil)
	r.Header.Set("Connection", "Upgrade, X-Secret")
	r.Header.Set("X-Secret", "for the next hop only")
	r.Header.Set("Alt-Svc", `h3=":443"`)
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Keep-Alive", "timeout=5")
	r.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	r.Header.Set("Sec-WebSocket-Protocol", "chat")
	r.Header.Set("Sec-WebSocket-Extensions", "permessage-deflate")
	r.Header.Set("X-Forwarded-For", "10.0.0.1")
	r.Header["X-Evil"] = []string{"a\r\nInjected: yes"}
	u, _ := ParseBackendURL("127.0.0.1:1")

	noEdit := func(*http.Request, *Upstream, http.Header) {}
	for _, tc := range []struct {
		name    string
		fwd     ForwardedFor
		edit    HeaderEditor
		wantXFF string
	}{
		{"untrusted client replaces XFF", ForwardedFor{ClientIP: "192.0.2.7"}, nil, "192.0.2.7"},
		{"trusted proxy extends XFF", ForwardedFor{ClientIP: "192.0.2.7", Trusted: true}, nil, "10.0.0.1, 192.0.2.7"},
		// The copy header_up edits starts as exactly what goes out without it.
		{"header editor that changes nothing", ForwardedFor{ClientIP: "192.0.2.7"}, noEdit, "192.0.2.7"},
		{"header editor, trusted proxy", ForwardedFor{ClientIP: "192.0.2.7", Trusted: true}, noEdit, "10.0.0.1, 192.0.2.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			go func() {
				writeUpgradeRequest(client, r, &Upstream{URL: u}, tc.fwd, tc.edit)
				client.Close()
			}()
			got, err := http.ReadRequest(bufio.NewReader(server))
			if err != nil {
				t.Fatal(err)
			}
			if got.RequestURI != "/ws?q=1" || got.Host != "site.example" {
				t.Errorf("request line %s host %s", got.RequestURI, got.Host)
			}
			for name, want := range map[string]string{
				"Connection":               "Upgrade",
				"Upgrade":                  "websocket",
				"Keep-Alive":               "",
				"Proxy-Authorization":      "",
				"X-Secret":                 "",
				"Alt-Svc":                  "",
				"Sec-Websocket-Protocol":   "chat",
				"Sec-Websocket-Extensions": "permessage-deflate",
				"X-Forwarded-For":          tc.wantXFF,
				"X-Forwarded-Proto":        "http",
				"X-Forwarded-Host":         "site.example",
				"X-Evil":                   "aInjected: yes",
				"Injected":                 "",
			} {
				if v := got.Header.Get(name); v != want {
					t.Errorf("%s = %q, want %q", name, v, want)
				}
			}
		})
	}
}

// A header editor (header_up) sees the headers the backend would get, Host
// included; what it sets, adds and deletes is what the backend gets, except
// hop-by-hop headers, and the client's request is left as it was.
func TestWriteUpgradeRequestEdited(t *testing.T) {
	u, _ := ParseBackendURL("ws://10.0.0.9:9101/base")
	for _, tc := range []struct {
		name string
		edit HeaderEditor
		want map[string]string // "" = absent
	}{
		{
			name: "set, add and delete",
			edit: func(r *http.Request, _ *Upstream, h http.Header) {
				if got := h.Get("X-Forwarded-Host"); got != "site.example" {
					t.Errorf("editor saw X-Forwarded-Host %q", got)
				}
				h.Set("X-Tenant", r.Host)
				h.Add("X-Trace", "added")
				h.Del("Cookie")
				h.Set("X-Forwarded-Proto", "https")
			},
			want: map[string]string{
				"Host": "site.example", "X-Tenant": "site.example", "X-Trace": "from client,added",
				"Cookie": "", "X-Forwarded-Proto": "https", "Origin": "http://site.example",
			},
		},
		{
			name: "Host replaced",
			edit: func(_ *http.Request, _ *Upstream, h http.Header) { h.Set("Host", "internal.example") },
			want: map[string]string{"Host": "internal.example"},
		},
		{
			name: "Host deleted: the backend's own",
			edit: func(_ *http.Request, _ *Upstream, h http.Header) { h.Del("Host") },
			want: map[string]string{"Host": "10.0.0.9:9101"},
		},
		{
			name: "hop-by-hop headers cannot be set",
			edit: func(_ *http.Request, _ *Upstream, h http.Header) {
				h.Set("Connection", "close")
				h.Set("Upgrade", "h2c")
				h.Set("Keep-Alive", "1")
			},
			want: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Keep-Alive": ""},
		},
		{
			name: "names that would split the request are dropped",
			edit: func(_ *http.Request, _ *Upstream, h http.Header) {
				h["X-A\r\nInjected"] = []string{"x"}
				h["X-B"] = []string{"1\r\nInjected: yes"}
			},
			want: map[string]string{"Injected": "", "X-B": "1Injected: yes"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "http://site.example/ws", nil)
			r.Header.Set("Connection", "Upgrade")
			r.Header.Set("Upgrade", "websocket")
			r.Header.Set("Origin", "http://site.example")
			r.Header.Set("X-Trace", "from client")
			r.Header.Set("Cookie", "s=1")
			before := r.Header.Clone()
			got := roundTripRequest(t, func(c net.Conn) error {
				return writeUpgradeRequest(c, r, &Upstream{URL: u}, ForwardedFor{ClientIP: "192.0.2.7"}, tc.edit)
			})
			if got.RequestURI != "/base/ws" {
				t.Errorf("request target %s", got.RequestURI)
			}
			for name, want := range tc.want {
				v := strings.Join(got.Header.Values(name), ",")
				if name == "Host" {
					v = got.Host
				}
				if v != want {
					t.Errorf("%s = %q, want %q", name, v, want)
				}
			}
			if !reflect.DeepEqual(r.Header, before) {
				t.Errorf("client's headers changed: %v, were %v", r.Header, before)
			}
		})
	}
}

// roundTripRequest parses what write writes as an HTTP request.
func roundTripRequest(t *testing.T, write func(net.Conn) error) *http.Request {
	t.Helper()
	client, server := net.Pipe()
	go func() {
		write(client)
		client.Close()
	}()
	got, err := http.ReadRequest(bufio.NewReader(server))
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// The 101 the client gets has the backend's end-to-end headers, Connection:
// Upgrade and the backend's Upgrade, and none of the hop-by-hop headers the
// backend sent, those its Connection header names included.
func TestAppendResponseHead(t *testing.T) {
	resp := &http.Response{StatusCode: 101, Header: http.Header{
		"Connection":             {"Upgrade, X-Backend-Hop"},
		"Upgrade":                {"websocket"},
		"X-Backend-Hop":          {"internal"},
		"Keep-Alive":             {"timeout=5"},
		"Sec-Websocket-Accept":   {"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
		"Sec-Websocket-Protocol": {"chat"},
		"Server":                 {"backend/1.0"},
	}}
	got, err := http.ReadResponse(bufio.NewReader(strings.NewReader(string(appendResponseHead(nil, resp)))), nil)
	if err != nil {
		t.Fatal(err)
	}
	want := http.Header{
		"Connection":             {"Upgrade"},
		"Upgrade":                {"websocket"},
		"Sec-Websocket-Accept":   {"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="},
		"Sec-Websocket-Protocol": {"chat"},
		"Server":                 {"backend/1.0"},
	}
	if got.StatusCode != 101 || !reflect.DeepEqual(got.Header, want) {
		t.Errorf("got %d %v, want 101 %v", got.StatusCode, got.Header, want)
	}
}

// A response editor (header_down) runs after hop-by-hop headers are gone,
// and cannot take the Upgrade from a 101.
func TestEditResponse(t *testing.T) {
	resp := &http.Response{StatusCode: 101, Header: http.Header{
		"Connection":    {"Upgrade, X-Backend-Hop"},
		"Upgrade":       {"websocket"},
		"X-Backend-Hop": {"internal"},
		"Server":        {"backend/1.0"},
	}}
	var seen http.Header
	editResponse(nil, nil, resp, func(_ *http.Request, _ *Upstream, resp *http.Response) {
		seen = resp.Header.Clone()
		resp.Header.Del("Server")
		resp.Header.Del("Upgrade")
		resp.Header.Set("X-Balanced", "yes")
	})
	if len(seen) != 1 || seen.Get("Server") != "backend/1.0" {
		t.Errorf("editor saw %v, want only Server", seen)
	}
	want := http.Header{"Upgrade": {"websocket"}, "X-Balanced": {"yes"}}
	if !reflect.DeepEqual(resp.Header, want) {
		t.Errorf("edited %v, want %v", resp.Header, want)
	}
}

func BenchmarkWriteUpgradeRequest(b *testing.B) {
	r := httptest.NewRequest(http.MethodGet, "http://site.example/ws?q=1", nil)
	for k, v := range map[string]string{
		"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "http://site.example",
		"User-Agent": "bench", "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
	} {
		r.Header.Set(k, v)
	}
	u, _ := ParseBackendURL("127.0.0.1:1")
	up := &Upstream{URL: u}
	var conn discardConn
	fwd := ForwardedFor{ClientIP: "127.0.0.1"}
	b.ReportAllocs()
	for b.Loop() {
		writeUpgradeRequest(conn, r, up, fwd, nil)
	}
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }
