package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// site returns a site body balancing over backends.
func site(backends []*harness.EchoBackend, extra string) string {
	addrs := make([]string, len(backends))
	for i, b := range backends {
		addrs[i] = b.Addr
	}
	return fmt.Sprintf("\tws_balancer {\n\t\tbackends %s\n%s\t}\n\trespond \"plain http\" 200\n", strings.Join(addrs, " "), extra)
}

func startEchoes(t *testing.T, n int, opts harness.EchoOptions) []*harness.EchoBackend {
	bs := make([]*harness.EchoBackend, n)
	for i := range bs {
		bs[i] = harness.StartEcho(t, opts)
	}
	return bs
}

// dialMany opens n connections with a few concurrent dialers and fails the
// test on any error.
func dialMany(t *testing.T, ctx context.Context, url string, n, concurrency int) []*websocket.Conn {
	t.Helper()
	conns := make([]*websocket.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, concurrency)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, _, err := harness.Dial(ctx, url, nil)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("dialing: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	return conns
}

func lives(bs []*harness.EchoBackend) []int64 {
	out := make([]int64, len(bs))
	for i, b := range bs {
		out[i] = b.Live()
	}
	return out
}

func waitLive(t *testing.T, ctx context.Context, bs []*harness.EchoBackend, want []int64) {
	t.Helper()
	ok := harness.WaitFor(ctx, 5*time.Second, func() bool {
		got := lives(bs)
		for i := range want {
			if want[i] >= 0 && got[i] != want[i] {
				return false
			}
		}
		return true
	})
	if !ok {
		t.Fatalf("backend live counts %v, want %v", lives(bs), want)
	}
}

// 300 held connections spread 100 ± 10 over three backends;
// after one backend loses all its connections, it gets ≥ 80 of the next 100.
func TestProxySpreadsAndRefills(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bs := startEchoes(t, 3, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, ""))

	dialMany(t, ctx, caddy.URL("/ws"), 300, 16)
	// A backend counts a connection after writing its 101, which the
	// client may have read already: wait until all 300 are counted.
	harness.WaitFor(ctx, 5*time.Second, func() bool {
		l := lives(bs)
		return l[0]+l[1]+l[2] == 300
	})
	got := lives(bs)
	t.Logf("300 connections spread as %v", got)
	var sum int64
	for i, n := range got {
		sum += n
		if n < 90 || n > 110 {
			t.Errorf("backend %d holds %d connections, want 100 ± 10", i, n)
		}
	}
	if sum != 300 {
		t.Errorf("backends hold %d connections in all, want 300", sum)
	}

	bs[0].CloseAll(websocket.CloseGoingAway, "rebalance test")
	if !harness.WaitFor(ctx, 5*time.Second, func() bool {
		s, err := caddy.Backends()
		return err == nil && s.TotalLive == 300-got[0]
	}) {
		s, err := caddy.Backends()
		t.Fatalf("balancer did not see backend 0's connections close: %+v %v", s, err)
	}
	dialMany(t, ctx, caddy.URL("/ws"), 100, 16)
	landed := bs[0].Live()
	t.Logf("after emptying backend 0, %d of the next 100 connections landed on it (spread %v)", landed, lives(bs))
	if landed < 80 {
		t.Errorf("only %d of 100 new connections went to the emptied backend, want ≥ 80", landed)
	}
}

// Clients of a killed backend are closed within 2 s; the next
// 100 connections all succeed on the survivors.
func TestProxyKilledBackend(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 3, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, "\t\tfail_duration 30s\n"))
	conns := dialMany(t, ctx, caddy.URL("/ws"), 90, 8)
	waitLive(t, ctx, bs, []int64{30, 30, 30})

	killedAt := time.Now()
	bs[1].Kill()
	var closed sync.WaitGroup
	var mu sync.Mutex
	var slowest time.Duration
	codes := map[int]int{}
	for _, c := range conns {
		closed.Add(1)
		go func() {
			defer closed.Done()
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, _, err := c.ReadMessage()
			if ce, ok := err.(*websocket.CloseError); ok {
				mu.Lock()
				codes[ce.Code]++
				mu.Unlock()
			}
			if err != nil && !isTimeout(err) {
				mu.Lock()
				slowest = max(slowest, time.Since(killedAt))
				mu.Unlock()
			}
		}()
	}
	closed.Wait()
	t.Logf("killed backend: clients closed within %v, close codes %v", slowest, codes)
	if codes[1011]+codes[1001] < 30 {
		t.Errorf("want the killed backend's 30 clients closed with 1011/1001, got %v", codes)
	}
	if slowest > 2*time.Second {
		t.Errorf("clients closed after %v, want within 2s", slowest)
	}

	fresh := dialMany(t, ctx, caddy.URL("/ws"), 100, 8)
	for i, c := range fresh {
		if err := harness.Echo(c, fmt.Sprintf("after-kill-%d", i), 5*time.Second); err != nil {
			t.Fatalf("connection %d after the kill: %v", i, err)
		}
	}
	if n := bs[1].Live(); n != 0 {
		t.Errorf("killed backend got %d connections", n)
	}
}

func isTimeout(err error) bool {
	type timeout interface{ Timeout() bool }
	te, ok := err.(timeout)
	return ok && te.Timeout()
}

// A config reload (unchanged, then with a changed backend list)
// while 200 connections are held: all still echo, and the admin counts add
// up to 200.
func TestProxySurvivesReload(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	bs := startEchoes(t, 3, harness.EchoOptions{})
	caddy := harness.StartCaddy(t, site(bs, ""))
	conns := dialMany(t, ctx, caddy.URL("/ws"), 200, 16)

	fourth := harness.StartEcho(t, harness.EchoOptions{})
	for i, body := range []string{
		site(bs, "\t\tmax_attempts 2\n"),                       // changed options, same backends
		site(append(bs, fourth), ""),                           // a backend added
		site([]*harness.EchoBackend{bs[0], bs[1], fourth}, ""), // one removed
	} {
		if err := caddy.Reload(body); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		for j, c := range conns {
			if err := harness.Echo(c, fmt.Sprintf("reload-%d-%d", i, j), 5*time.Second); err != nil {
				t.Fatalf("after reload %d, connection %d: %v", i, j, err)
			}
		}
		s, err := caddy.Backends()
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, b := range s.Backends {
			sum += b.Live
		}
		t.Logf("after reload %d: total_live %d, sum over listed backends %d", i, s.TotalLive, sum)
		if s.TotalLive != 200 || sum != 200 {
			t.Errorf("after reload %d: admin counts total_live=%d listed=%d, want 200", i, s.TotalLive, sum)
		}
	}
}
