package wsbackend

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

// startAgent starts a Consul test agent and returns a client for it.
func startAgent(t *testing.T, opts consultest.Options) (*consultest.Agent, *api.Client) {
	t.Helper()
	return consultest.StartTest(t, opts)
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
		v, _ := instanceMeta(entries, id, MetaConnections)
		return v == strconv.FormatInt(n, 10)
	}
}

// Against an agent with Consul's default check_update_interval (output-only
// check updates reach the servers minutes later), a change of more than 10%
// in the count shows in ?passing health answers within 5 s, through the
// meta, while the same count in the check output has not arrived.
func TestRegistrationCountVisibleWithin5s(t *testing.T) {
	t.Parallel()
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
			agent, client := startAgent(t, consultest.Options{}) // CheckUpdateInterval 0: Consul's 5m
			var c Counter
			c.Add(tt.start)
			reg, err := Register(ctx, RegistrationOptions{
				Client: client, Service: "echo", Address: "127.0.0.1", Port: 9101, Counter: &c,
			})
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Deregister(context.Background())
			watchHealth(ctx, t, client, "echo", hasConnections(reg.ID(), tt.start))
			// Let a heartbeat or two go by, so the check output changes too.
			time.Sleep(3500 * time.Millisecond)

			// A change after a quiet spell goes out at once; the same change
			// again right after that publish waits for MinPublishInterval:
			// the worst case.
			want := tt.start
			for _, when := range []string{"after a quiet spell", "right after a publish"} {
				want += tt.change
				changed := time.Now()
				c.Add(tt.change)
				watchHealth(ctx, t, client, "echo", hasConnections(reg.ID(), want))
				lag := time.Since(changed)
				if lag > 5*time.Second {
					t.Errorf("count %d visible %v after the change, want within 5s", want, lag)
				}
				_, at, _ := reg.Published()
				t.Logf("%s: %d -> %d published after %v, visible through ?passing meta after %v (%d server writes in all)",
					when, want-tt.change, want, at.Sub(changed).Round(time.Millisecond), lag.Round(time.Millisecond), agent.ServerWrites())
			}

			// The check output carries the same count once the next
			// heartbeat ran, but only on the agent: the servers (and so every
			// balancer) still have the old output. The 5-minute trap.
			wantOutput := fmt.Sprintf("connections=%d ", want)
			waitFor(ctx, t, "the heartbeat to carry the count", func() bool {
				checks, err := client.Agent().Checks()
				return err == nil && checks[reg.CheckID()] != nil && strings.Contains(checks[reg.CheckID()].Output, wantOutput)
			})
			if hc := serviceCheck(t, client, "echo", reg.CheckID()); hc == nil || strings.Contains(hc.Output, wantOutput) {
				t.Errorf("catalog check = %+v; want it present with stale output (the test agent does not model check_update_interval)", hc)
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
// The window opens while every count is steady (nothing in flight) and
// closes once the agent has gone quiet after the churn, so that every write
// caused inside it is counted, however slowly the agent answers (-race).
func TestRegistrationFleetWriteBound(t *testing.T) {
	t.Parallel()
	const (
		backends = 100
		churnFor = 8 * time.Second
		interval = DefaultMinPublishInterval
	)
	tests := []struct {
		name                string
		checkUpdateInterval time.Duration
		writesPerPublish    int64
	}{
		{"default check_update_interval", 0, 1},
		{"check_update_interval 0s", -1, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			agent, client := startAgent(t, consultest.Options{CheckUpdateInterval: tt.checkUpdateInterval})

			counters := make([]*Counter, backends)
			regs := make([]*Registration, backends)
			for i := range backends {
				counters[i] = new(Counter)
				counters[i].Add(100)
				reg, err := Register(ctx, RegistrationOptions{
					Client: client, Service: "fleet", Address: "127.0.0.1", Port: 10000 + i,
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
					wg.Go(func() { reg.Deregister(context.Background()) })
				}
				wg.Wait()
			}()

			writes0 := agent.ServerWrites()
			registers0 := agent.Requests("/v1/agent/service/register")
			updates0 := agent.Requests("/v1/agent/check/update/")
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
				n := agent.Requests("/v1/agent/service/register")
				if n == last {
					break
				}
				last = n
				time.Sleep(time.Second)
			}
			time.Sleep(DefaultReportInterval + 500*time.Millisecond)
			elapsed := time.Since(start)
			writes := agent.ServerWrites() - writes0
			registers := agent.Requests("/v1/agent/service/register") - registers0
			updates := agent.Requests("/v1/agent/check/update/") - updates0

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
	_, client := startAgent(t, consultest.Options{})
	var c Counter
	c.Add(3)
	reg, err := Register(ctx, RegistrationOptions{
		Client: client, Service: "echo", ID: "echo-1", Address: "127.0.0.1", Port: 9101,
		PublicURL: "ws://echo-1.example:9101/ws", Capacity: 50, Tags: []string{"blue"},
		Meta: map[string]string{"version": "1.2"}, Counter: &c,
	})
	if err != nil {
		t.Fatal(err)
	}

	entries := watchHealth(ctx, t, client, "echo", func(e []*api.ServiceEntry) bool { return len(e) == 1 })
	svc := entries[0].Service
	wantMeta := map[string]string{MetaConnections: "3", MetaCapacity: "50", MetaURL: "ws://echo-1.example:9101/ws", "version": "1.2"}
	for k, v := range wantMeta {
		if svc.Meta[k] != v {
			t.Errorf("meta %s = %q, want %q", k, svc.Meta[k], v)
		}
	}
	if _, ok := svc.Meta[MetaDraining]; ok {
		t.Error("fresh registration carries ws_draining")
	}
	if svc.ID != "echo-1" || svc.Address != "127.0.0.1" || svc.Port != 9101 || len(svc.Tags) != 1 {
		t.Errorf("service = %+v", svc)
	}
	if hc := serviceCheck(t, client, "echo", reg.CheckID()); hc == nil || hc.Type != "ttl" || hc.Status != api.HealthPassing {
		t.Errorf("check %s = %+v, want a passing TTL check", reg.CheckID(), hc)
	}

	if err := reg.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	watchHealth(ctx, t, client, "echo", func(e []*api.ServiceEntry) bool {
		v, ok := instanceMeta(e, "echo-1", MetaDraining)
		return ok && v == "true"
	})
	if err := reg.Undrain(ctx); err != nil {
		t.Fatal(err)
	}
	watchHealth(ctx, t, client, "echo", func(e []*api.ServiceEntry) bool {
		v, ok := instanceMeta(e, "echo-1", MetaDraining)
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
	all, _, err := client.Health().Service("echo", "", false, nil)
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
	if all, _, _ := client.Health().Service("echo", "", false, nil); len(all) != 0 {
		t.Error("service came back after Deregister")
	}
}

// TestRegistrationCapacityWarning: at capacity the check turns warning, so the
// instance leaves ?passing; below it, it comes back.
func TestRegistrationCapacityWarning(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, client := startAgent(t, consultest.Options{})
	var c Counter
	c.Add(5)
	reg, err := Register(ctx, RegistrationOptions{
		Client: client, Service: "echo", Address: "127.0.0.1", Port: 9101, Capacity: 10, Counter: &c,
		TTL: 2 * time.Second, ReportInterval: 500 * time.Millisecond, MinPublishInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Deregister(context.Background())
	present := func(e []*api.ServiceEntry) bool { _, ok := instanceMeta(e, reg.ID(), MetaConnections); return ok }
	watchHealth(ctx, t, client, "echo", present)

	full := time.Now()
	c.Add(5)
	watchHealth(ctx, t, client, "echo", func(e []*api.ServiceEntry) bool { return !present(e) })
	t.Logf("full backend left ?passing after %v", time.Since(full).Round(time.Millisecond))
	if hc := serviceCheck(t, client, "echo", reg.CheckID()); hc == nil || hc.Status != api.HealthWarning {
		t.Errorf("check at capacity = %+v, want warning", hc)
	}
	c.Add(-3)
	watchHealth(ctx, t, client, "echo", hasConnections(reg.ID(), 7))
}

// TestRegistrationRecovers covers an agent that forgot the service and an
// agent that was unreachable for longer than the TTL; each failure episode
// is logged once.
func TestRegistrationRecovers(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		disrupt func(t *testing.T, a *consultest.Agent, client *api.Client, reg *Registration)
	}{
		{"agent forgot the service", func(t *testing.T, a *consultest.Agent, client *api.Client, reg *Registration) {
			if err := client.Agent().ServiceDeregister(reg.ID()); err != nil {
				t.Fatal(err)
			}
		}},
		{"agent unreachable beyond the TTL", func(t *testing.T, a *consultest.Agent, client *api.Client, reg *Registration) {
			if err := a.Stop(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second) // TTL 1s: the check is critical now
			if err := a.Restart(); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			agent, client := startAgent(t, consultest.Options{})
			core, logs := observer.New(zapcore.InfoLevel)
			var c Counter
			c.Add(42)
			reg, err := Register(ctx, RegistrationOptions{
				Client: client, Service: "echo", Address: "127.0.0.1", Port: 9101, Counter: &c,
				TTL: time.Second, ReportInterval: 200 * time.Millisecond, Logger: zap.New(core),
			})
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Deregister(context.Background())
			watchHealth(ctx, t, client, "echo", hasConnections(reg.ID(), 42))

			tt.disrupt(t, agent, client, reg)
			back := time.Now()
			watchHealth(ctx, t, client, "echo", hasConnections(reg.ID(), 42))
			t.Logf("passing again %v after the disruption ended", time.Since(back).Round(time.Millisecond))

			if n := logs.FilterLevelExact(zapcore.WarnLevel).FilterMessageSnippet("updating the TTL check").Len(); n > 1 {
				t.Errorf("heartbeat failure logged %d times, want at most once per episode", n)
			}
		})
	}
}

func TestRegisterErrors(t *testing.T) {
	t.Parallel()
	agent, client := startAgent(t, consultest.Options{ACLToken: "root"})
	valid := RegistrationOptions{Client: client, Service: "echo", Address: "127.0.0.1", Port: 9101}
	tests := []struct {
		name   string
		modify func(o *RegistrationOptions)
		want   string
	}{
		{"no service", func(o *RegistrationOptions) { o.Service = "" }, "Service is required"},
		{"no port", func(o *RegistrationOptions) { o.Port = 0 }, "Port 0 out of range"},
		{"report interval not below TTL", func(o *RegistrationOptions) { o.TTL, o.ReportInterval = time.Second, time.Second }, "must be shorter than TTL"},
		{"bad public URL", func(o *RegistrationOptions) { o.PublicURL = "http://x/" }, "not a ws:// or wss:// URL"},
		{"reserved meta", func(o *RegistrationOptions) { o.Meta = map[string]string{MetaConnections: "1"} }, "set by the registration itself"},
		{"refresh below publish interval", func(o *RegistrationOptions) {
			o.MinPublishInterval, o.RefreshAfter = time.Second, time.Millisecond
		}, "RefreshAfter"},
		{"wrong ACL token", func(o *RegistrationOptions) {
			o.Client = consultest.NewTestClient(t, agent.Addr(), "wrong")
		}, "403"},
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

// TestRegistrationStopsWithContext: ending Register's ctx stops the loops.
func TestRegistrationStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, client := startAgent(t, consultest.Options{})
	var c Counter
	regCtx, stop := context.WithCancel(ctx)
	reg, err := Register(regCtx, RegistrationOptions{Client: client, Service: "echo", Port: 9101, Counter: &c})
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
