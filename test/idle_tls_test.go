package test

import (
	"context"
	"crypto/tls"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// 2,000 clients of an HTTPS site held idle through Caddy for 30 s
// (WSB_IDLE_TLS overrides) hold no goroutines: the hybrid relay waits for
// their sockets on the event loop, and a goroutine runs only while bytes
// move. The bound on Caddy's goroutine count (its admin endpoint's pprof
// total) is what it ran before the connections, plus the relay's idle
// workers (at most 16 per CPU, kept to move the next bytes), plus 16 for
// Caddy's own goroutines that come and go (admin requests, timers). The
// goroutine pair this replaced held two per connection: 4,000 here.
func TestIdleTLSHoldsNoGoroutines(t *testing.T) {
	hold := 30 * time.Second
	if v := os.Getenv("WSB_IDLE_TLS"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WSB_IDLE_TLS: %v", err)
		}
		hold = d
	}
	const n = 2000
	ctx, cancel := context.WithTimeout(context.Background(), hold+3*time.Minute)
	defer cancel()

	backends := startEchoes(t, 2, harness.EchoOptions{})
	caddy := harness.StartCaddyTLS(t, site(backends, ""))
	base, err := caddy.Goroutines()
	if err != nil {
		t.Fatal(err)
	}
	rssBase, _ := caddy.RSS()

	d := clientDialer(t, "127.0.5.1", 4)
	d.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	// TLS handshakes with a race-detector Caddy on a loaded machine can
	// take seconds: few at a time, with time to finish.
	d.HandshakeTimeout = time.Minute
	conns, failed := openConns(ctx, d, caddy.URL("/"), n, 20)
	defer closeAll(conns)
	if failed > 0 || len(conns) != n {
		t.Fatalf("opened %d of %d connections, %d failed", len(conns), n, failed)
	}
	// Every relay has moved bytes both ways, so its workers have run and
	// its watches are re-armed.
	if f := echoAll(conns, "hello"); f > 0 {
		t.Fatalf("%d of %d echoes failed", f, n)
	}

	bound := base + 16*runtime.NumCPU() + 16
	var peak int
	samples := 0
	for end := time.Now().Add(hold); time.Now().Before(end); samples++ {
		time.Sleep(time.Second)
		g, err := caddy.Goroutines()
		if err != nil {
			t.Fatal(err)
		}
		peak = max(peak, g)
	}
	rss, _ := caddy.RSS()
	t.Logf("%d idle TLS connections for %v: Caddy goroutines %d before them, at most %d while held (%d samples; bound %d, %.3f per connection above the start); RSS %.1f KB per connection (a race-detector build under -race)",
		n, hold, base, peak, samples, bound, float64(peak-base)/n, float64(rss-rssBase)/n/1024)
	if peak > bound {
		t.Errorf("Caddy ran %d goroutines with %d idle TLS connections, more than the bound %d", peak, n, bound)
	}
	// Idle is not dead: every connection still echoes.
	if f := echoAll(conns, "still there"); f > 0 {
		t.Fatalf("%d of %d echoes failed after %v idle", f, n, hold)
	}
}
