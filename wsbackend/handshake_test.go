package wsbackend

import (
	"bufio"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
	if !IsUpgrade(valid()) || checkUpgrade(valid()) != nil {
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
	if IsUpgrade(r) {
		t.Error("h2c upgrade taken for WebSocket")
	}
}

// The upstream request keeps end-to-end headers, drops hop-by-hop ones and
// cannot be split by CR/LF in a value.
func TestWriteUpgradeRequest(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "http://site.example/ws?q=1", nil)
	r.Header.Set("Connection", "Upgrade, X-Secret")
	r.Header.Set("Upgrade", "websocket")
	r.Header.Set("Keep-Alive", "timeout=5")
	r.Header.Set("Proxy-Authorization", "Basic c2VjcmV0")
	r.Header.Set("Sec-WebSocket-Protocol", "chat")
	r.Header.Set("Sec-WebSocket-Extensions", "permessage-deflate")
	r.Header.Set("X-Forwarded-For", "10.0.0.1")
	r.Header["X-Evil"] = []string{"a\r\nInjected: yes"}
	u, _ := ParseBackendURL("127.0.0.1:1")

	for _, tc := range []struct {
		name    string
		fwd     ForwardedFor
		wantXFF string
	}{
		{"untrusted client replaces XFF", ForwardedFor{ClientIP: "192.0.2.7"}, "192.0.2.7"},
		{"trusted proxy extends XFF", ForwardedFor{ClientIP: "192.0.2.7", Trusted: true}, "10.0.0.1, 192.0.2.7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			client, server := net.Pipe()
			go func() {
				writeUpgradeRequest(client, r, &Upstream{URL: u}, tc.fwd)
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
		writeUpgradeRequest(conn, r, up, fwd)
	}
}

type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }
