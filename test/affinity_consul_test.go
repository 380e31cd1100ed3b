package test

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// adminBackend is one backend of GET /ws_balancer/backends with the fields
// the affinity tests read (harness.BackendStatus has the older ones).
type adminBackend struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	State    string `json:"state"`
	Live     int64  `json:"live"`
	Load     int64  `json:"load"`
	Capacity int64  `json:"capacity"`
	Bound    *int64 `json:"bound"`
}

// adminBackends reads GET /ws_balancer/backends of c, raw and decoded.
func adminBackends(t *testing.T, c *harness.Caddy) ([]adminBackend, []map[string]any) {
	t.Helper()
	status, body, err := c.Admin("GET", "/ws_balancer/backends")
	if err != nil || status != 200 {
		t.Fatalf("GET /ws_balancer/backends: %d %s, %v", status, body, err)
	}
	var typed struct{ Backends []adminBackend }
	var raw struct{ Backends []map[string]any }
	if err := json.Unmarshal(body, &typed); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	return typed.Backends, raw.Backends
}

// Capacity weighting through Consul: three cmd/wsecho backends
// register through the project's library with capacities 4,000, 2,000 and
// 1,000 (meta ws_capacity); two Caddy instances watch them with a consul
// block and weight least connections by the reported capacity. 700
// connections opened one at a time through both instances alternately, and
// held, end about 400:200:100 (±10% each). Each instance sees the other's
// connections only through the backends' reports (every 2 s at most), so
// this also measures how the global count holds up with weights.
func TestAffinityConsulCapacityWeights(t *testing.T) {
	t.Parallel()
	ctx := csContext(t, 3*time.Minute)
	agent := consuldev.Shared(t)
	svc := csServiceName(t)
	bin := harness.WSEchoBinary(t)
	capacities := []int64{4000, 2000, 1000}
	var bs []*csWSEcho
	for i, capacity := range capacities {
		addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
		id := fmt.Sprintf("%s-%d", svc, i)
		p := harness.StartProcess(t, addr, bin, "-listen", addr, "-consul", agent.Addr(), "-service", svc,
			"-id", id, "-capacity", strconv.FormatInt(capacity, 10), "-drain-wait", "0s")
		bs = append(bs, &csWSEcho{echoProcess: &echoProcess{addr: addr}, ID: id, proc: p})
	}
	site := csBalancerSite(agent.Addr(), svc, "")
	caddies := []*harness.Caddy{csCaddy(t, site), csCaddy(t, site)}
	seen := csSeen(t, caddies, 3, 30*time.Second)

	// Both instances must know every capacity before the first connection:
	// they come with the registration, so this is immediate once listed.
	for i, c := range caddies {
		if !harness.WaitFor(ctx, 10*time.Second, func() bool {
			list, _ := adminBackends(t, c)
			byID := map[string]int64{}
			for _, b := range list {
				byID[b.ID] = b.Capacity
			}
			for j, b := range bs {
				if byID[b.ID] != capacities[j] {
					return false
				}
			}
			return true
		}) {
			list, _ := adminBackends(t, c)
			t.Fatalf("instance %d does not list the capacities %v: %+v", i, capacities, list)
		}
	}

	start := time.Now()
	csOpen(t, ctx, caddies, 700)
	took := time.Since(start)
	got := csWaitWSLive(t, ctx, bs, 700)
	loads := func(c *harness.Caddy) []int64 {
		list, _ := adminBackends(t, c)
		byID := map[string]int64{}
		for _, b := range list {
			byID[b.ID] = b.Load
		}
		var out []int64
		for _, b := range bs {
			out = append(out, byID[b.ID])
		}
		return out
	}
	before := [2][]int64{loads(caddies[0]), loads(caddies[1])}
	// Then the reports arrive, and both instances see the global load.
	reported := time.Now()
	global := harness.WaitFor(ctx, 30*time.Second, func() bool {
		for _, c := range caddies {
			if fmt.Sprint(loads(c)) != fmt.Sprint(got) {
				return false
			}
		}
		return true
	})
	after := [2][]int64{loads(caddies[0]), loads(caddies[1])}
	t.Logf("capacities 4000:2000:1000 reported through Consul, 700 connections through two balancers alternately (in %s, backends listed after %s): backends hold %v; "+
		"the balancers' loads right after: %v and %v; %s later: %v and %v",
		took.Round(time.Millisecond), seen.Round(time.Millisecond), got, before[0], before[1],
		time.Since(reported).Round(time.Millisecond), after[0], after[1])
	if !global {
		t.Errorf("the balancers' loads %v and %v did not reach the backends' counts %v within 30s", after[0], after[1], got)
	}
	for i, want := range []int64{400, 200, 100} {
		if math.Abs(float64(got[i]-want)) > 0.1*float64(want) {
			t.Errorf("backend with capacity %d holds %d, want %d ±10%% (all: %v)", capacities[i], got[i], want, got)
		}
	}
}
