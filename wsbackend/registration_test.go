package wsbackend

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

func TestMain(m *testing.M) { os.Exit(consuldev.Main(m)) }

// sharedAgent returns a client for the package's shared Consul agent
// (check_update_interval "0s") and a service name of the test's own: tests
// sharing the agent keep apart by service name and, since IDs are per
// agent, by IDs derived from it.
func sharedAgent(t *testing.T) (*api.Client, string) {
	t.Helper()
	return consuldev.Shared(t).Client(t, ""), serviceName(t)
}

// deregister ends a registration after a test, bounded: Deregister retries
// until the agent answers, and a failed test may have left it down.
func deregister(t *testing.T, reg *Registration) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := reg.Deregister(ctx); err != nil {
		t.Logf("deregistering %s after the test: %v", reg.ID(), err)
	}
}

// serviceName derives a Consul service name from the test's name.
func serviceName(t *testing.T) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		if r >= 'A' && r <= 'Z' {
			return r - 'A' + 'a'
		}
		return '-'
	}, t.Name())
}

// watchHealth follows /v1/health/service/name?passing with blocking queries
// until cond holds for the answer, and returns that answer.
func watchHealth(ctx context.Context, t *testing.T, client *api.Client, name string, cond func([]*api.ServiceEntry) bool) []*api.ServiceEntry {
	t.Helper()
	var index uint64
	for {
		q := (&api.QueryOptions{WaitIndex: index, WaitTime: time.Second}).WithContext(ctx)
		entries, meta, err := client.Health().Service(name, "", true, q)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatalf("watching %s: %v", name, ctx.Err())
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if cond(entries) {
			return entries
		}
		if meta.LastIndex < index {
			index = 0
		} else {
			index = max(meta.LastIndex, 1)
		}
	}
}

// instanceMeta returns the meta value key of instance id, and whether the
// instance is in entries at all.
func instanceMeta(entries []*api.ServiceEntry, id, key string) (string, bool) {
	for _, e := range entries {
		if e.Service.ID == id {
			return e.Service.Meta[key], true
		}
	}
	return "", false
}

// serviceCheck returns the check checkID of service name from the catalog.
func serviceCheck(t *testing.T, client *api.Client, name, checkID string) *api.HealthCheck {
	t.Helper()
	entries, _, err := client.Health().Service(name, "", false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		for _, hc := range e.Checks {
			if hc.CheckID == checkID {
				return hc
			}
		}
	}
	return nil
}

func hasConnections(id string, n int64) func([]*api.ServiceEntry) bool {
	return func(entries []*api.ServiceEntry) bool {
		v, _ := instanceMeta(entries, id, protocol.MetaConnections)
		return v == strconv.FormatInt(n, 10)
	}
}

// Against an agent with Consul's default check_update_interval (output-only
// check updates reach the servers minutes later), a change of more than 10%
// in the count shows in ?passing health answers within 5 s, through the
// meta, while the same count in the check output has not arrived.
func TestRegistrationCountVisibleWithin5s(t *testing.T) {
	t.Parallel()
	// An agent of the test's own: the shared one syncs output at once.
	agent := consuldev.Start(t, consuldev.Options{})
	client := agent.Client(t, "")
	tests := []struct {
		name          string
		start, change int64
	}{
		{"up 15%", 100, 15},
		{"down 20%", 100, -20},
		{"up from idle", 0, 10},
		{"busy backend up 11%", 5000, 600},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			svc := serviceName(t)
			var c Counter
			c.Add(tt.start)
			reg, err := Register(ctx, RegistrationOptions{
				Client: client, Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101, Counter: &c,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer deregister(t, reg)
			watchHealth(ctx, t, client, svc, hasConnections(reg.ID(), tt.start))
			// Let a heartbeat or two go by, so the check output changes too.
			time.Sleep(3500 * time.Millisecond)

			// A change after a quiet spell goes out at once; the same change
			// again right after that publish waits for MinPublishInterval:
			// the worst case. 5 s is the promise (a 2 s interval, at most
			// 1.4 times that with jitter, then one registration); the worst
			// of 28 changes under -race on 2 busy cores (load 8-12) was
			// visible after 2.8 s.
			want := tt.start
			for _, when := range []string{"after a quiet spell", "right after a publish"} {
				want += tt.change
				changed := time.Now()
				c.Add(tt.change)
				watchHealth(ctx, t, client, svc, hasConnections(reg.ID(), want))
				lag := time.Since(changed)
				if lag > 5*time.Second {
					t.Errorf("count %d visible %v after the change, want within 5s", want, lag)
				}
				_, at, _ := reg.Published()
				t.Logf("%s: %d -> %d published after %v, visible through ?passing meta after %v",
					when, want-tt.change, want, at.Sub(changed).Round(time.Millisecond), lag.Round(time.Millisecond))
			}

			// The check output carries the same count once the next
			// heartbeat ran, but only on the agent: the servers (and so every
			// balancer) still have the output from before. The 5-minute trap.
			wantOutput := fmt.Sprintf("connections=%d ", want)
			waitFor(ctx, t, "the heartbeat to carry the count", func() bool {
				checks, err := client.Agent().Checks()
				return err == nil && checks[reg.CheckID()] != nil && strings.Contains(checks[reg.CheckID()].Output, wantOutput)
			})
			if hc := serviceCheck(t, client, svc, reg.CheckID()); hc == nil || strings.Contains(hc.Output, wantOutput) {
				t.Errorf("catalog check = %+v; want it present with the output from before the change (output-only updates wait for check_update_interval)", hc)
			} else {
				t.Logf("agent's check output has %q, the catalog's still %q", wantOutput, hc.Output)
			}
		})
	}
}

// 100 backends churning their counts against one agent cause at most one
// re-registration per backend per MinPublishInterval, which with Consul's
// default check_update_interval is the whole of their server writes. With
// check_update_interval "0s" the heartbeat's output (which carries the
// published count) adds at most one write per publish.
//
// Server writes are the growth of the agent's Raft index, which also counts
// the agent's own few writes: 0 to 2 in a window of 15.5 s, beyond the
// re-registrations, in 7 runs with the default interval. Re-registrations and TTL updates are counted
// by a Front before the agent. The window opens while every count is steady
// (nothing in flight) and closes once the agent has gone quiet after the
// churn, so that every write caused inside it is counted, however slowly
// the agent answers (-race).
func TestRegistrationFleetWriteBound(t *testing.T) {
	t.Parallel()
	const (
		backends = 100
		churnFor = 8 * time.Second
		interval = DefaultMinPublishInterval
	)
	tests := []struct {
		name             string
		hcl              string
		writesPerPublish int64
	}{
		{"default check_update_interval", "", 1},
		{"check_update_interval 0s", `check_update_interval = "0s"`, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			// Agents of the subtest's own: their Raft index counts only
			// this fleet's writes.
			agent := consuldev.Start(t, consuldev.Options{HCL: tt.hcl})
			front := consuldev.NewFront(t, agent.Addr())
			client := consuldev.NewClient(t, front.Addr(), "")

			counters := make([]*Counter, backends)
			regs := make([]*Registration, backends)
			for i := range backends {
				counters[i] = new(Counter)
				counters[i].Add(100)
				reg, err := Register(ctx, RegistrationOptions{
					Client: client, Service: "fleet", ID: "fleet-" + strconv.Itoa(i), Address: "127.0.0.1", Port: 10000 + i,
					Capacity: 100000, Counter: counters[i],
				})
				if err != nil {
					t.Fatal(err)
				}
				regs[i] = reg
			}
			defer func() {
				var wg sync.WaitGroup
				for _, reg := range regs {
					wg.Go(func() { deregister(t, reg) })
				}
				wg.Wait()
			}()

			writes0 := agent.RaftIndex(t)
			registers0 := front.Requests("/v1/agent/service/register")
			updates0 := front.Requests("/v1/agent/check/update/")
			start := time.Now()

			// Churn: every 50 ms each backend gains or loses up to 30% of
			// its connections, so nearly every count is worth publishing.
			churnCtx, stopChurn := context.WithTimeout(ctx, churnFor)
			defer stopChurn()
			var wg sync.WaitGroup
			for _, c := range counters {
				wg.Go(func() {
					tick := time.NewTicker(50 * time.Millisecond)
					defer tick.Stop()
					for {
						select {
						case <-churnCtx.Done():
							return
						case <-tick.C:
						}
						n := c.Live()
						target := max(20, min(400, n+rand.Int64N(n*6/10+1)-n*3/10))
						c.Add(target - n)
					}
				})
			}
			wg.Wait()
			// Let the last publishes land (no re-registration for a second),
			// then the heartbeats that follow them.
			for last := int64(-1); ; {
				n := front.Requests("/v1/agent/service/register")
				if n == last {
					break
				}
				last = n
				time.Sleep(time.Second)
			}
			time.Sleep(DefaultReportInterval + 500*time.Millisecond)
			elapsed := time.Since(start)
			writes := int64(agent.RaftIndex(t) - writes0)
			registers := front.Requests("/v1/agent/service/register") - registers0
			updates := front.Requests("/v1/agent/check/update/") - updates0

			publishBound := backends * (int64(elapsed/interval) + 1)
			writeBound := tt.writesPerPublish * publishBound
			t.Logf("%d backends, %v of churn, window %v: %d server writes (bound %d), %d re-registrations (bound %d), %d TTL updates",
				backends, churnFor, elapsed.Round(time.Millisecond), writes, writeBound, registers, publishBound, updates)
			if writes > writeBound {
				t.Errorf("%d server writes in %v, want at most %d", writes, elapsed, writeBound)
			}
			if registers > publishBound {
				t.Errorf("%d re-registrations in %v, want at most %d", registers, elapsed, publishBound)
			}
			if registers < backends*2 {
				t.Errorf("only %d re-registrations in %v of churn: the counts were not published", registers, churnFor)
			}
		})
	}
}

func TestRegistrationLifecycle(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, svc := sharedAgent(t)
	id := svc + "-1"
	var c Counter
	c.Add(3)
	reg, err := Register(ctx, RegistrationOptions{
		Client: client, Service: svc, ID: id, Address: "127.0.0.1", Port: 9101,
		PublicURL: "ws://echo-1.example:9101/ws", Capacity: 50, Tags: []string{"blue"},
		Meta: map[string]string{"version": "1.2"}, Counter: &c,
	})
	if err != nil {
		t.Fatal(err)
	}

	entries := watchHealth(ctx, t, client, svc, func(e []*api.ServiceEntry) bool { return len(e) == 1 })
	got := entries[0].Service
	wantMeta := map[string]string{protocol.MetaConnections: "3", protocol.MetaCapacity: "50", protocol.MetaURL: "ws://echo-1.example:9101/ws", "version": "1.2"}
	for k, v := range wantMeta {
		if got.Meta[k] != v {
			t.Errorf("meta %s = %q, want %q", k, got.Meta[k], v)
		}
	}
	if _, ok := got.Meta[protocol.MetaDraining]; ok {
		t.Error("fresh registration carries ws_draining")
	}
	if got.ID != id || got.Address != "127.0.0.1" || got.Port != 9101 || len(got.Tags) != 1 {
		t.Errorf("service = %+v", got)
	}
	if hc := serviceCheck(t, client, svc, reg.CheckID()); hc == nil || hc.Type != "ttl" || hc.Status != api.HealthPassing {
		t.Errorf("check %s = %+v, want a passing TTL check", reg.CheckID(), hc)
	}

	if err := reg.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	watchHealth(ctx, t, client, svc, func(e []*api.ServiceEntry) bool {
		v, ok := instanceMeta(e, id, protocol.MetaDraining)
		return ok && v == "true"
	})
	if err := reg.Undrain(ctx); err != nil {
		t.Fatal(err)
	}
	watchHealth(ctx, t, client, svc, func(e []*api.ServiceEntry) bool {
		v, ok := instanceMeta(e, id, protocol.MetaDraining)
		return ok && v == ""
	})

	if err := reg.Deregister(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-reg.done:
	default:
		t.Error("loops still running after Deregister")
	}
	if hs := c.hooks.Load(); hs != nil && len(*hs) != 0 {
		t.Errorf("Deregister left %d hooks on the Counter", len(*hs))
	}
	all, _, err := client.Health().Service(svc, "", false, nil)
	if err != nil || len(all) != 0 {
		t.Errorf("after Deregister: %d instances, %v", len(all), err)
	}
	if err := reg.Deregister(ctx); err != nil {
		t.Errorf("second Deregister: %v", err)
	}
	if err := reg.Drain(ctx); err == nil {
		t.Error("Drain after Deregister succeeded")
	}
	// Nothing may bring the service back.
	c.Add(100)
	time.Sleep(300 * time.Millisecond)
	if all, _, _ := client.Health().Service(svc, "", false, nil); len(all) != 0 {
		t.Error("service came back after Deregister")
	}
}

// At capacity the check turns warning, so the instance leaves ?passing;
// below it, it comes back.
func TestRegistrationCapacityWarning(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, svc := sharedAgent(t)
	var c Counter
	c.Add(5)
	reg, err := Register(ctx, RegistrationOptions{
		Client: client, Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101, Capacity: 10, Counter: &c,
		TTL: 2 * time.Second, ReportInterval: 500 * time.Millisecond, MinPublishInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer deregister(t, reg)
	present := func(e []*api.ServiceEntry) bool {
		_, ok := instanceMeta(e, reg.ID(), protocol.MetaConnections)
		return ok
	}
	watchHealth(ctx, t, client, svc, present)

	full := time.Now()
	c.Add(5)
	watchHealth(ctx, t, client, svc, func(e []*api.ServiceEntry) bool { return !present(e) })
	t.Logf("full backend left ?passing after %v", time.Since(full).Round(time.Millisecond))
	if hc := serviceCheck(t, client, svc, reg.CheckID()); hc == nil || hc.Status != api.HealthWarning {
		t.Errorf("check at capacity = %+v, want warning", hc)
	}
	c.Add(-3)
	watchHealth(ctx, t, client, svc, hasConnections(reg.ID(), 7))
}

// A registration heals by itself when the agent forgot the service or was
// unreachable for longer than the TTL; each failure episode is logged once.
// (An agent restart, which forgets everything, has a test of its own.)
func TestRegistrationRecovers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// disrupt runs against the shared agent (client: straight to it)
		// while the registration talks to it through front.
		disrupt func(ctx context.Context, t *testing.T, client *api.Client, front *consuldev.Front, reg *Registration)
	}{
		{"agent forgot the service", func(_ context.Context, t *testing.T, client *api.Client, _ *consuldev.Front, reg *Registration) {
			// The next heartbeat gets 404 "Unknown check ID".
			if err := client.Agent().ServiceDeregister(reg.ID()); err != nil {
				t.Fatal(err)
			}
		}},
		{"agent unreachable beyond the TTL", func(ctx context.Context, t *testing.T, client *api.Client, front *consuldev.Front, reg *Registration) {
			// A real agent cannot be made unreachable while it keeps its
			// state; a Front resetting every connection can.
			front.SetFault(consuldev.Reset)
			down := time.Now()
			waitFor(ctx, t, "the TTL check to lapse", func() bool {
				hc := serviceCheck(t, client, reg.opts.Service, reg.CheckID())
				return hc != nil && hc.Status == api.HealthCritical
			})
			t.Logf("check critical %v after the agent became unreachable", time.Since(down).Round(time.Millisecond))
			front.SetFault(consuldev.Pass)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			client, svc := sharedAgent(t)
			front := consuldev.NewFront(t, consuldev.Shared(t).Addr())
			core, logs := observer.New(zapcore.InfoLevel)
			var c Counter
			c.Add(42)
			reg, err := Register(ctx, RegistrationOptions{
				Client: consuldev.NewClient(t, front.Addr(), ""), Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101, Counter: &c,
				TTL: time.Second, ReportInterval: 200 * time.Millisecond, Logger: zap.New(core),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer deregister(t, reg)
			watchHealth(ctx, t, client, svc, hasConnections(reg.ID(), 42))

			tt.disrupt(ctx, t, client, front, reg)
			back := time.Now()
			watchHealth(ctx, t, client, svc, hasConnections(reg.ID(), 42))
			t.Logf("passing again %v after the disruption ended", time.Since(back).Round(time.Millisecond))

			if n := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("updating the TTL check").Len(); n > 1 {
				t.Errorf("heartbeat failure logged %d times, want at most once per episode", n)
			}
		})
	}
}

// A restarted agent (a dev agent, or any agent that lost its data) knows no
// services. Each registration notices on its own and registers again with
// its current count and state: through the heartbeat, whose TTL update is
// answered 404 "Unknown check ID"; through the Reporter, when the count
// changes first; through Drain. Deregistering a forgotten service succeeds.
func TestRegistrationAfterAgentRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	agent := consuldev.Start(t, consuldev.Options{HCL: consuldev.SharedHCL})
	client := agent.Client(t, "")

	// slow keeps the heartbeat out of the way for a minute, so that only
	// the path under test can register again.
	slow := func(o *RegistrationOptions) { o.TTL, o.ReportInterval = 2*time.Minute, time.Minute }
	withCapacity := func(o *RegistrationOptions) { slow(o); o.Capacity = 10 }
	type check func(ctx context.Context, t *testing.T, reg *Registration, c *Counter) func([]*api.ServiceEntry) bool
	tests := []struct {
		name   string
		start  int64
		opts   func(*RegistrationOptions)
		outage func(c *Counter) // while the agent is down
		// after runs once the agent is back and returns what the health
		// answers (all instances, passing or not) must come to show.
		after check
		// within bounds the time from the restart until after holds; 0
		// means the test's deadline (the figure is logged).
		within time.Duration
	}{
		{
			// Default timings. During the outage the heartbeat backs off to
			// at most ReportInterval, so it tries again within 3 s of the
			// restart and registers within the next second. Measured from
			// the restart (the agent answering, with a leader): 0.05-1.9 s
			// in 7 runs under -race on 2 busy cores (load 8-12).
			name: "heartbeat registers again with the count", start: 42,
			after: func(_ context.Context, _ *testing.T, reg *Registration, _ *Counter) func([]*api.ServiceEntry) bool {
				return hasConnections(reg.ID(), 42)
			},
			within: DefaultReportInterval + 2*time.Second,
		},
		{
			name: "count changed during the outage", start: 42,
			outage: func(c *Counter) { c.Add(18) },
			after: func(_ context.Context, _ *testing.T, reg *Registration, _ *Counter) func([]*api.ServiceEntry) bool {
				return hasConnections(reg.ID(), 60)
			},
			within: DefaultReportInterval + 2*time.Second,
		},
		{
			name: "Reporter registers again on a count change", start: 42, opts: slow,
			after: func(_ context.Context, _ *testing.T, reg *Registration, c *Counter) func([]*api.ServiceEntry) bool {
				c.Add(20)
				return hasConnections(reg.ID(), 62)
			},
		},
		{
			name: "Drain registers again, draining", start: 42, opts: slow,
			after: func(ctx context.Context, t *testing.T, reg *Registration, _ *Counter) func([]*api.ServiceEntry) bool {
				if err := reg.Drain(ctx); err != nil {
					t.Fatalf("Drain of a forgotten service: %v", err)
				}
				return func(e []*api.ServiceEntry) bool {
					v, _ := instanceMeta(e, reg.ID(), protocol.MetaDraining)
					return v == "true" && hasConnections(reg.ID(), 42)(e)
				}
			},
		},
		{
			// The re-registration creates the check afresh: it must not
			// start passing while the backend is full.
			name: "full backend registers again as warning", start: 10, opts: withCapacity,
			after: func(_ context.Context, t *testing.T, reg *Registration, c *Counter) func([]*api.ServiceEntry) bool {
				c.Add(10)
				return func(e []*api.ServiceEntry) bool {
					for _, se := range e {
						if se.Service.ID == reg.ID() && se.Service.Meta[protocol.MetaConnections] == "20" {
							if status := se.Checks.AggregatedStatus(); status != api.HealthWarning {
								t.Errorf("full backend registered again as %s, want warning", status)
							}
							return true
						}
					}
					return false
				}
			},
		},
		{
			name: "Deregister of a forgotten service succeeds", start: 42, opts: slow,
			after: func(ctx context.Context, t *testing.T, reg *Registration, c *Counter) func([]*api.ServiceEntry) bool {
				if err := reg.Deregister(ctx); err != nil {
					t.Fatalf("Deregister of a forgotten service: %v", err)
				}
				c.Add(100) // and nothing brings it back
				time.Sleep(300 * time.Millisecond)
				return func(e []*api.ServiceEntry) bool {
					_, ok := instanceMeta(e, reg.ID(), protocol.MetaConnections)
					return !ok
				}
			},
		},
	}

	type running struct {
		reg *Registration
		c   *Counter
		svc string
	}
	regs := make([]running, len(tests))
	for i, tt := range tests {
		svc := fmt.Sprintf("restart-%d", i)
		c := new(Counter)
		c.Add(tt.start)
		opts := RegistrationOptions{Client: client, Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101, Counter: c}
		if tt.opts != nil {
			tt.opts(&opts)
		}
		reg, err := Register(ctx, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { deregister(t, reg) })
		waitAll(ctx, t, client, svc, hasConnections(reg.ID(), tt.start))
		regs[i] = running{reg, c, svc}
	}

	agent.Stop(t)
	for i, tt := range tests {
		if tt.outage != nil {
			tt.outage(regs[i].c)
		}
	}
	time.Sleep(time.Second) // long enough for the second row's publish to fail
	agent.Restart(t)
	restarted := time.Now()

	// Not parallel: each row's time counts from the restart, and parallel
	// subtests would first wait for a free slot behind the package's other
	// tests (18 s on 2 busy cores).
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := regs[i]
			cond := tt.after(ctx, t, r.reg, r.c)
			waitAll(ctx, t, client, r.svc, cond)
			took := time.Since(restarted)
			t.Logf("registered as expected %v after the agent came back", took.Round(time.Millisecond))
			if tt.within > 0 && took > tt.within {
				t.Errorf("took %v after the restart, want within %v", took, tt.within)
			}
		})
	}
}

// waitAll polls every instance of service name (passing or not) until cond
// holds.
func waitAll(ctx context.Context, t *testing.T, client *api.Client, name string, cond func([]*api.ServiceEntry) bool) {
	t.Helper()
	waitFor(ctx, t, "the registration of "+name, func() bool {
		entries, _, err := client.Health().Service(name, "", false, (&api.QueryOptions{}).WithContext(ctx))
		return err == nil && cond(entries)
	})
}

// agentForgot decides on re-registration from the agent's answer: what
// Consul says when it does not know the check or the service (wordings of
// Consul 1.14.11, checked against the real agent, and of other versions),
// not refusals or outages.
func TestAgentForgot(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"1.14 TTL update of a forgotten check", api.StatusError{Code: 404, Body: `Unknown check ID "service:echo-1". Ensure that the check ID is passed, not the check name.`}, true},
		{"1.14 call about a forgotten service", api.StatusError{Code: 404, Body: `Unknown service ID "echo-1". Ensure that the service ID is passed, not the service name.`}, true},
		{"1.14 maintenance of a forgotten service", api.StatusError{Code: 404, Body: `No service registered with ID "echo-1"`}, true},
		{"check without TTL (older versions)", api.StatusError{Code: 500, Body: `CheckID "service:echo-1" does not have associated TTL`}, true},
		{"service not found (other versions)", api.StatusError{Code: 500, Body: `service not found: echo-1`}, true},
		{"wrapped", fmt.Errorf("updating: %w", api.StatusError{Code: 404, Body: "Unknown check ID"}), true},
		{"ACL refusal", api.StatusError{Code: 403, Body: "Permission denied"}, false},
		{"no leader", api.StatusError{Code: 500, Body: "No cluster leader"}, false},
		{"rate limited", api.StatusError{Code: 429, Body: "rate limit exceeded"}, false},
		{"agent down", errors.New("dial tcp 127.0.0.1:8500: connect: connection refused"), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if got := agentForgot(tt.err); got != tt.want {
				t.Errorf("agentForgot(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// With ACLs on (default deny), a backend whose token may write its service
// registers, reports its count and heartbeats; without a token, with a
// token Consul does not know, or with one too weak, Register fails at once
// with an error that says what Consul refused.
func TestRegistrationACL(t *testing.T) {
	t.Parallel()
	agent := consuldev.Start(t, consuldev.Options{ACL: true})
	admin := agent.Client(t, consuldev.ManagementToken)
	tests := []struct {
		name  string
		rules string // "" and token "": no token
		token string // a token Consul does not know, when set
		want  []string
	}{
		{name: "backend token registers and reports", rules: consuldev.BackendRules("@svc")},
		// Consul 1.14 names the anonymous token by its accessor ID only.
		{name: "no token", want: []string{"403", "Permission denied", "lacks permission 'service:write'"}},
		{name: "wrong token", token: "4a6e8f1c-0000-4000-8000-000000000000", want: []string{"403", "ACL not found"}},
		{name: "read-only token", rules: `service "@svc" { policy = "read" }`, want: []string{"403", "Permission denied", "lacks permission 'service:write'"}},
		{name: "another service's token", rules: consuldev.BackendRules("other"), want: []string{"403", "Permission denied", "lacks permission 'service:write'"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			svc := serviceName(t)
			token := tt.token
			if tt.rules != "" {
				token = agent.Token(t, svc, strings.ReplaceAll(tt.rules, "@svc", svc))
			}
			var c Counter
			c.Add(10)
			reg, err := Register(ctx, RegistrationOptions{
				Client: agent.Client(t, token), Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101, Counter: &c,
				TTL: 2 * time.Second, ReportInterval: 200 * time.Millisecond, MinPublishInterval: 100 * time.Millisecond,
			})
			if tt.want != nil {
				if err == nil {
					reg.Deregister(ctx)
					t.Fatal("Register succeeded")
				}
				for _, w := range append(tt.want, svc+"-1", `must exist and grant service:write on "`+svc+`"`) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not mention %q", err, w)
					}
				}
				t.Logf("Register: %v", err)
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			watchHealth(ctx, t, admin, svc, hasConnections(reg.ID(), 10))
			c.Add(10)
			watchHealth(ctx, t, admin, svc, hasConnections(reg.ID(), 20))
			// Heartbeats pass the ACL too: the output follows the count.
			waitFor(ctx, t, "a heartbeat carrying the count", func() bool {
				checks, err := admin.Agent().Checks()
				return err == nil && checks[reg.CheckID()] != nil && strings.Contains(checks[reg.CheckID()].Output, "connections=20 ")
			})
			if err := reg.Deregister(ctx); err != nil {
				t.Fatalf("Deregister: %v", err)
			}
			if all, _, err := admin.Health().Service(svc, "", false, nil); err != nil || len(all) != 0 {
				t.Errorf("after Deregister: %d instances, %v", len(all), err)
			}
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	client, svc := sharedAgent(t)
	valid := RegistrationOptions{Client: client, Service: svc, ID: svc + "-1", Address: "127.0.0.1", Port: 9101}
	tests := []struct {
		name   string
		modify func(o *RegistrationOptions)
		want   string
	}{
		{"no service", func(o *RegistrationOptions) { o.Service = "" }, "Service is required"},
		{"no port", func(o *RegistrationOptions) { o.Port = 0 }, "Port 0 out of range"},
		{"report interval not below TTL", func(o *RegistrationOptions) { o.TTL, o.ReportInterval = time.Second, time.Second }, "must be shorter than TTL"},
		{"bad public URL", func(o *RegistrationOptions) { o.PublicURL = "http://x/" }, "not a ws:// or wss:// URL"},
		{"reserved meta", func(o *RegistrationOptions) { o.Meta = map[string]string{protocol.MetaConnections: "1"} }, "set by the registration itself"},
		{"refresh below publish interval", func(o *RegistrationOptions) {
			o.MinPublishInterval, o.RefreshAfter = time.Second, time.Millisecond
		}, "RefreshAfter"},
		{"agent refuses the definition", func(o *RegistrationOptions) { o.Meta = map[string]string{"consul-x": "1"} }, "400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			opts := valid
			tt.modify(&opts)
			reg, err := Register(ctx, opts)
			if err == nil {
				reg.Deregister(ctx)
				t.Fatal("Register succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q does not mention %q", err, tt.want)
			}
		})
	}
}

// Ending Register's ctx stops the loops.
func TestRegistrationStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client, svc := sharedAgent(t)
	var c Counter
	regCtx, stop := context.WithCancel(ctx)
	reg, err := Register(regCtx, RegistrationOptions{Client: client, Service: svc, ID: svc + "-1", Port: 9101, Counter: &c})
	if err != nil {
		t.Fatal(err)
	}
	stop()
	select {
	case <-reg.done:
	case <-ctx.Done():
		t.Fatal("loops still running after the context ended")
	}
	if hs := c.hooks.Load(); hs != nil && len(*hs) != 0 {
		t.Errorf("%d hooks left on the Counter", len(*hs))
	}
	if err := reg.Deregister(ctx); err != nil {
		t.Errorf("Deregister after the context ended: %v", err)
	}
}
