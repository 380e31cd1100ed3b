package test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// clientDialer dials from several loopback source addresses so that the
// test's own client side never runs out of ports.
func clientDialer(t *testing.T, first string, n int) *websocket.Dialer {
	t.Helper()
	addrs := make([]netip.Addr, 0, n)
	a := netip.MustParseAddr(first)
	for range n {
		addrs = append(addrs, a)
		a = a.Next()
	}
	sd, err := balancer.NewSourceDialer(addrs, 5*time.Second, 0)
	if err != nil {
		t.Fatal(err)
	}
	return &websocket.Dialer{NetDialContext: sd.DialContext, HandshakeTimeout: 10 * time.Second, ReadBufferSize: 256, WriteBufferSize: 256}
}

// openConns opens n connections, returning those that succeeded and the
// number that failed.
func openConns(ctx context.Context, d *websocket.Dialer, url string, n, concurrency int) ([]*websocket.Conn, int) {
	var (
		mu     sync.Mutex
		conns  []*websocket.Conn
		failed atomic.Int64
		wg     sync.WaitGroup
		sem    = make(chan struct{}, concurrency)
	)
	for range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := d.DialContext(ctx, url, nil)
			if err != nil {
				failed.Add(1)
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	return conns, int(failed.Load())
}

func closeAll(conns []*websocket.Conn) {
	for _, c := range conns {
		c.Close()
	}
}

// echoAll echoes once on every connection, with bounded concurrency, and
// returns how many failed.
func echoAll(conns []*websocket.Conn, tag string) int {
	var failed atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 200)
	for i, c := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if harness.Echo(c, tag+strconv.Itoa(i), 10*time.Second) != nil {
				failed.Add(1)
			}
		}()
	}
	wg.Wait()
	return int(failed.Load())
}

const inNetnsEnv = "WSB_IN_NETNS"

// Past the port wall, at reduced scale: inside a network namespace whose
// ephemeral port range is narrowed to 4,500 ports, 8,000 connections to one
// backend ip:port fail without source_addresses and all succeed with two
// (9,000 ports to the backend: 8,000 with margin, as the kernel does not
// hand out every last port of a nearly full range).
func TestSourceAddressesPastPortRange(t *testing.T) {
	if os.Getenv(inNetnsEnv) == "" {
		runInNetns(t, "TestSourceAddressesPastPortRange")
		return
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_local_port_range", []byte("30000 34499"), 0o644); err != nil {
		t.Fatalf("narrowing the port range inside the namespace: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const n = 8000

	backendAddr := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
	harness.StartProcess(t, backendAddr, harness.WSEchoBinary(t), "-listen", backendAddr)
	bin := harness.CaddyBinaryNoRace(t)

	for _, tc := range []struct {
		name     string
		extra    string
		clientIP string
		wantAll  bool
	}{
		{"one source address", "", "127.0.2.1", false},
		{"two source addresses", "\t\tsource_addresses 127.0.1.1 127.0.1.2\n", "127.0.3.1", true},
	} {
		caddy := harness.StartCaddyBinary(t, bin, fmt.Sprintf("\tws_balancer {\n\t\tbackends %s\n\t\tmax_attempts 1\n\t\tdial_timeout 2s\n%s\t}\n", backendAddr, tc.extra))
		start := time.Now()
		conns, failed := openConns(ctx, clientDialer(t, tc.clientIP, 4), caddy.URL("/"), n, 100)
		elapsed := time.Since(start)
		echoFailed := echoAll(conns, tc.name)
		t.Logf("%s: %d of %d connections to one backend port succeeded, %d failed, %d echo failures (%.1fs, port range 4,500)",
			tc.name, len(conns), n, failed, echoFailed, elapsed.Seconds())
		if tc.wantAll && (failed > 0 || echoFailed > 0 || len(conns) != n) {
			t.Errorf("%s: want all %d connections to work", tc.name, n)
		}
		if !tc.wantAll && failed == 0 {
			t.Errorf("%s: all %d connections succeeded through 4,000 ports: the range was not narrowed", tc.name, n)
		}
		closeAll(conns)
		caddy.Stop()
	}
}

// runInNetns re-runs the named test inside a fresh network namespace, as
// root; the namespace has its own loopback and its own port range, so the
// machine's settings are not touched.
func runInNetns(t *testing.T, name string) {
	harness.Require(t, "root, to create a network namespace (ip netns add)", os.Geteuid() == 0)
	_, err := exec.LookPath("ip")
	harness.Require(t, "the ip command (Debian package iproute2)", err == nil)
	ns := fmt.Sprintf("wsbtest-%d", os.Getpid())
	out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput()
	harness.Require(t, fmt.Sprintf("a network namespace (ip netns add: %v: %s)", err, strings.TrimSpace(string(out))), err == nil)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("bringing lo up in %s: %v: %s", ns, err, out)
	}
	// Build outside, so the child does not rebuild.
	caddy := harness.CaddyBinaryNoRace(t)
	harness.WSEchoBinary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", ns, self, "-test.run", "^"+name+"$", "-test.v", "-test.timeout", "5m")
	cmd.Env = append(os.Environ(), inNetnsEnv+"=1", "WSB_CADDY_BIN="+caddy)
	cmd.Dir, _ = os.Getwd()
	out, err = cmd.CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, ".go:") || strings.HasPrefix(strings.TrimSpace(line), "---") {
			t.Log(strings.TrimSpace(line))
		}
	}
	if err != nil {
		t.Fatalf("inside namespace %s: %v", ns, err)
	}
}
