package test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// A config reload keeps relayed connections; Caddy exiting (SIGTERM) closes
// them with 1001 Going Away after shutdown_grace.
func TestShutdownClosesWithGoingAway(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bs := startEchoes(t, 2, harness.EchoOptions{})
	body := site(bs, "\t\tshutdown_grace 500ms\n")
	caddy := harness.StartCaddy(t, body)
	conns := dialMany(t, ctx, caddy.URL("/ws"), 50, 8)

	// Reload: nothing is closed, every connection still echoes.
	if err := caddy.Reload(body + "\t# reloaded\n"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	for i, c := range conns {
		if err := harness.Echo(c, "after reload", 2*time.Second); err != nil {
			t.Fatalf("connection %d after reload: %v", i, err)
		}
	}

	// Exit: every client gets 1001.
	type result struct {
		code int
		at   time.Duration
		err  error
	}
	results := make([]result, len(conns))
	var wg sync.WaitGroup
	start := time.Now()
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			_, _, err := c.ReadMessage()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				results[i] = result{code: ce.Code, at: time.Since(start)}
			} else {
				results[i] = result{err: err, at: time.Since(start)}
			}
		}()
	}
	caddy.Stop() // SIGTERM, waits for the exit
	exited := time.Since(start)
	wg.Wait()
	var first, last time.Duration
	for i, r := range results {
		if r.err != nil || r.code != websocket.CloseGoingAway {
			t.Errorf("client %d: got code %d err %v, want close 1001", i, r.code, r.err)
			continue
		}
		if first == 0 || r.at < first {
			first = r.at
		}
		last = max(last, r.at)
	}
	t.Logf("SIGTERM: clients got 1001 between %v and %v; Caddy exited after %v",
		first.Round(time.Millisecond), last.Round(time.Millisecond), exited.Round(time.Millisecond))
	if first < 450*time.Millisecond {
		t.Errorf("first 1001 after %v, before the 500ms shutdown_grace", first)
	}
	for _, b := range bs {
		for _, c := range b.Closes() {
			if c.Code != websocket.CloseGoingAway {
				t.Errorf("backend got close %d %q, want 1001", c.Code, c.Text)
				break
			}
		}
	}
}
