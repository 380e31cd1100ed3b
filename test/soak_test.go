package test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// 9,000 connections held through one instance for 60 s
// (WSB_SOAK overrides) with an echo on each every few seconds: none lost,
// and the proxy's memory does not grow once the connections are up.
func TestSoak9000(t *testing.T) {
	soak := 60 * time.Second
	if v := os.Getenv("WSB_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("WSB_SOAK: %v", err)
		}
		soak = d
	}
	const n = 9000
	ctx, cancel := context.WithTimeout(context.Background(), soak+3*time.Minute)
	defer cancel()

	var backends []string
	for range 3 {
		addr := "127.0.0.1:" + strconv.Itoa(harness.FreePort(t))
		harness.StartProcess(t, addr, harness.WSEchoBinary(t), "-listen", addr)
		backends = append(backends, addr)
	}
	// Without the race detector: its limit of 8128 live goroutines is
	// below what 9,000 relayed connections need.
	caddy := harness.StartCaddyBinary(t, harness.CaddyBinaryNoRace(t),
		"\tws_balancer {\n\t\tbackends "+backends[0]+" "+backends[1]+" "+backends[2]+"\n\t}\n")
	rssIdle, _ := caddy.RSS()

	start := time.Now()
	conns, failed := openConns(ctx, clientDialer(t, "127.0.4.1", 4), caddy.URL("/"), n, 100)
	defer closeAll(conns)
	if failed > 0 || len(conns) != n {
		t.Fatalf("opened %d of %d connections, %d failed", len(conns), n, failed)
	}
	t.Logf("%d connections up in %.1fs", n, time.Since(start).Seconds())
	if f := echoAll(conns, "warm"); f > 0 {
		t.Fatalf("%d echoes failed in the warm-up round", f)
	}
	rssUp, err := caddy.RSS()
	if err != nil {
		t.Fatal(err)
	}

	var rssMax int64
	rounds := 0
	for end := time.Now().Add(soak); time.Now().Before(end); rounds++ {
		time.Sleep(3 * time.Second)
		if f := echoAll(conns, "soak"); f > 0 {
			t.Fatalf("round %d: %d of %d echoes failed", rounds, f, n)
		}
		rss, err := caddy.RSS()
		if err != nil {
			t.Fatal(err)
		}
		rssMax = max(rssMax, rss)
	}
	s, err := caddy.Backends()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("soak %v: %d echo rounds on %d connections, none lost; admin total_live %d; Caddy RSS idle %d MiB, with connections up %d MiB (%.1f KB/conn), max during soak %d MiB",
		soak, rounds, n, s.TotalLive, rssIdle>>20, rssUp>>20, float64(rssUp-rssIdle)/n/1024, rssMax>>20)
	if s.TotalLive != n {
		t.Errorf("admin counts %d live connections, want %d", s.TotalLive, n)
	}
	// Flat: no more than 10% (or 8 MiB, for GC timing) above the level
	// reached once the connections were up.
	if limit := rssUp + max(rssUp/10, 8<<20); rssMax > limit {
		t.Errorf("RSS grew from %d MiB to %d MiB while holding the connections", rssUp>>20, rssMax>>20)
	}
}
