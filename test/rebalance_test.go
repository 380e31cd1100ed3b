package test

import (
	"context"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// Three backends hold 300 connections each; a fourth joins (config
// reload). With rebalance on, connections on the loaded ones are closed
// with 1012 at no more than the rate until max/avg is within the ratio;
// with it off, nothing is closed.
func TestRebalance(t *testing.T) {
	for _, on := range []bool{true, false} {
		name := "off"
		if on {
			name = "on"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			bs := startEchoes(t, 4, harness.EchoOptions{})
			extra := ""
			if on {
				extra = "\t\trebalance {\n\t\t\tratio 1.2\n\t\t\tafter 1s\n\t\t\trate 40/s\n\t\t}\n"
			}
			caddy := harness.StartCaddy(t, site(bs[:3], extra))
			cctx, stopClients := context.WithCancel(ctx)
			rc := &reconnectors{url: caddy.URL("/ws")}
			rc.start(t, cctx, 900)
			defer rc.wg.Wait()
			defer stopClients()
			waitLive(t, ctx, bs, []int64{-1, -1, -1, 0})
			if err := caddy.Reload(site(bs, extra)); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			if !on {
				time.Sleep(3 * time.Second)
				if n := rc.reconnects.Load(); n != 0 {
					t.Errorf("rebalance off: %d connections closed", n)
				}
				t.Logf("rebalance off: spread stays %v", lives(bs))
				return
			}
			within := func() bool {
				l := lives(bs)
				var sum, top int64
				for _, n := range l {
					sum += n
					top = max(top, n)
				}
				return sum == 900 && float64(top) <= 1.2*float64(sum)/4
			}
			if !harness.WaitFor(ctx, 20*time.Second, within) {
				t.Fatalf("spread %v not within ratio 1.2 after 20s", lives(bs))
			}
			took := time.Since(start)
			closes := rc.reconnects.Load()
			time.Sleep(1500 * time.Millisecond) // nothing more is closed once within
			peak := rc.maxPerSecond()
			t.Logf("rebalanced to %v in %v with %d closes, at most %d seen by the clients in one second (rate 40/s)",
				lives(bs), took.Round(time.Millisecond), rc.reconnects.Load(), peak)
			// Every close happened between the reload and the moment the
			// spread was within: at 40/s with a burst of 1 there can be no
			// more than 40 per second of that, however a slow machine
			// bunches what the clients see (their one-second peak, logged).
			if limit := int64(40*took.Seconds()) + 1; closes > limit {
				t.Errorf("%d closes in %v, want at most %d at 40/s", closes, took, limit)
			}
			if n := rc.reconnects.Load(); n > 100 {
				t.Errorf("%d connections closed, want about 90 (down to 270 each)", n)
			}
			if !within() {
				t.Errorf("spread %v left the ratio again", lives(bs))
			}
			if errs := rc.errors(); len(errs) > 0 {
				t.Errorf("%d clients failed, first: %v", len(errs), errs[0])
			}
		})
	}
}
