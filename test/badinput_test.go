package test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// rawRequest sends raw bytes to addr and returns the status line and headers
// of the answer (or the error that ended the exchange).
func rawRequest(t *testing.T, addr, req string) (*http.Response, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, req); err != nil {
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

const upgradeHeaders = "Connection: Upgrade\r\nUpgrade: websocket\r\n"

// Bad input gets a clear error, leaks no goroutine and does not
// disturb other clients.
func TestBadInput(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bs := startEchoes(t, 2, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, "\thandle /strict* {\n"+site(bs, "\t\treject_non_websocket\n")+"\t}\n\thandle {\n"+site(bs, "")+"\t}\n")

	// A bystander connection that must keep working throughout.
	bystander := dialMany(t, ctx, caddy.URL("/ws"), 1, 1)[0]
	if err := harness.Echo(bystander, "warm-up", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	before, err := caddy.Goroutines()
	if err != nil {
		t.Fatal(err)
	}

	key := "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, tc := range []struct {
		name       string
		req        string
		wantStatus int
	}{
		{"plain GET goes to the next handler", "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 200},
		{"plain GET rejected when strict", "GET /strict HTTP/1.1\r\nHost: x\r\n\r\n", 400},
		{"bad Sec-WebSocket-Version", "GET /ws HTTP/1.1\r\nHost: x\r\n" + upgradeHeaders + key + "Sec-WebSocket-Version: 8\r\n\r\n", 426},
		{"missing Sec-WebSocket-Version", "GET /ws HTTP/1.1\r\nHost: x\r\n" + upgradeHeaders + key + "\r\n", 426},
		{"missing key", "GET /ws HTTP/1.1\r\nHost: x\r\n" + upgradeHeaders + "Sec-WebSocket-Version: 13\r\n\r\n", 400},
		{"malformed key", "GET /ws HTTP/1.1\r\nHost: x\r\n" + upgradeHeaders + "Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n", 400},
		{"POST upgrade", "POST /ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n" + upgradeHeaders + key + "Sec-WebSocket-Version: 13\r\n\r\n", 405},
		{"garbage bytes", "\x16\x03\x01\x02\x00garbage\r\n\r\n", 400},
		{"header injection attempt", "GET /ws HTTP/1.1\r\nHost: x\r\n" + upgradeHeaders + key + "Sec-WebSocket-Version: 13\r\nX-A: b\rc\r\n\r\n", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := strings.Replace(tc.req, "Host: x\r\n", "Host: "+caddy.Addr()+"\r\n", 1)
			resp, err := rawRequest(t, caddy.Addr(), req)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantStatus == 426 && resp.Header.Get("Sec-WebSocket-Version") != "13" {
				t.Errorf("426 without Sec-WebSocket-Version: 13")
			}
		})
	}

	t.Run("slow handshake", func(t *testing.T) {
		conn, err := net.Dial("tcp", caddy.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		slowDone := make(chan error, 1)
		go func() {
			req := "GET /ws HTTP/1.1\r\nHost: " + caddy.Addr() + "\r\n" + upgradeHeaders
			for i := range len(req) {
				if _, err := conn.Write([]byte{req[i]}); err != nil {
					slowDone <- err
					return
				}
				time.Sleep(time.Second)
			}
			slowDone <- nil
		}()
		// Meanwhile a normal client connects and echoes at once.
		start := time.Now()
		c := dialMany(t, ctx, caddy.URL("/ws"), 1, 1)[0]
		if err := harness.Echo(c, "while slow", 2*time.Second); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("normal client took %v next to a slow handshake", d)
		}
		c.Close()
		// Caddy's read_header timeout (3s in the harness) ends the slow one.
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Errorf("slow handshake got %s", resp.Status)
			}
			t.Logf("slow handshake answered %s", resp.Status)
		} else {
			t.Logf("slow handshake cut off: %v", err)
		}
	})

	if err := harness.Echo(bystander, "still here", 5*time.Second); err != nil {
		t.Fatalf("bystander broken by bad input: %v", err)
	}
	var after int
	ok := harness.WaitFor(ctx, 10*time.Second, func() bool {
		after, err = caddy.Goroutines()
		return err == nil && after <= before
	})
	t.Logf("goroutines in Caddy: %d before, %d after the bad input", before, after)
	if !ok {
		t.Errorf("goroutine leak: %d before, %d after", before, after)
	}
}

// Backend refusals pass through unchanged and are not retried; with every
// backend down or full the client gets 503 with Retry-After.
func TestRefusalAndUnavailable(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	refuser := harness.StartEcho(t, harness.EchoOptions{})
	refuser.Refuse.Store(http.StatusForbidden)
	other := harness.StartEcho(t, harness.EchoOptions{})
	dead := harness.StartEcho(t, harness.EchoOptions{})
	dead.Kill()
	caddy := harness.StartCaddy(t,
		"\thandle /refuse* {\n"+site([]*harness.EchoBackend{refuser}, "")+"\t}\n"+
			"\thandle /dead* {\n"+site([]*harness.EchoBackend{dead}, "\t\tretry_after 7s\n")+"\t}\n"+
			"\thandle /full* {\n"+site([]*harness.EchoBackend{other}, "\t\tmax_conns 2\n")+"\t}\n")

	_, resp, err := harness.Dial(ctx, caddy.URL("/refuse"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("refusing backend: err %v resp %v, want the backend's 403", err, resp)
	}
	if n := len(refuser.Requests()); n != 1 {
		t.Errorf("refusing backend saw %d requests, want 1 (no retry)", n)
	}

	for i := range 2 {
		_, resp, err = harness.Dial(ctx, caddy.URL("/dead"), nil)
		if err == nil || resp == nil {
			t.Fatalf("dead backend attempt %d: err %v", i, err)
		}
		t.Logf("dead backend attempt %d: %s Retry-After=%q", i, resp.Status, resp.Header.Get("Retry-After"))
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "7" {
		t.Errorf("with its only backend marked down: %s Retry-After=%q, want 503 and 7", resp.Status, resp.Header.Get("Retry-After"))
	}

	dialMany(t, ctx, caddy.URL("/full"), 2, 1)
	_, resp, err = harness.Dial(ctx, caddy.URL("/full"), nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("over max_conns: err %v resp %+v, want 503 with Retry-After", err, resp)
	}
}

// An invalid Caddyfile is refused by the real binary with a message naming
// the problem.
func TestInvalidCaddyfile(t *testing.T) {
	t.Parallel()
	bin := harness.CaddyBinary(t)
	for _, tc := range []struct{ body, want string }{
		{"ws_balancer {\n}", "no backends configured"},
		{"ws_balancer {\n backends 127.0.0.1:1\n max_conns lots\n}", `"lots" is not a non-negative integer`},
		{"ws_balancer {\n backends 127.0.0.1:1\n fail_duration soon\n}", `"soon" is not a valid duration`},
		{"ws_balancer {\n backends 127.0.0.1:1\n colour blue\n}", `unrecognized subdirective "colour"`},
		{"ws_balancer {\n backends ftp://127.0.0.1:1\n}", `scheme "ftp" is not ws or wss`},
		{"ws_balancer {\n backends 127.0.0.1:99999\n}", "out of range"},
		{"ws_balancer {\n backends 127.0.0.1:1\n mode teleport\n}", `unknown mode "teleport"`},
		{"ws_balancer {\n backends 127.0.0.1:1\n max_conns 1\n max_conns 2\n}", "given twice"},
		{"ws_balancer {\n backends 127.0.0.1:1\n tls_server_name backend.internal\n}", "no backend is wss://"},
		{"ws_balancer {\n backends wss://127.0.0.1:1\n tls_trusted_ca_certs /nonexistent/ca.pem\n}", "/nonexistent/ca.pem"},
	} {
		dir := t.TempDir()
		path := filepath.Join(dir, "Caddyfile")
		cfg := fmt.Sprintf(":0 {\n%s\n}\n", tc.body) // no order line: ws_balancer places itself
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(bin, "validate", "--config", path, "--adapter", "caddyfile").CombinedOutput()
		if err == nil {
			t.Errorf("config accepted:\n%s", tc.body)
			continue
		}
		// Caddy logs the error as JSON, escaping its quotes.
		if msg := strings.ReplaceAll(string(out), `\"`, `"`); !strings.Contains(msg, tc.want) {
			t.Errorf("config %q: error does not say %q:\n%s", tc.body, tc.want, lastLines(string(out), 3))
		}
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
