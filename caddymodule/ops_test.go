package caddymodule

import (
	"encoding/json"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

func TestUnmarshalOpsOptions(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  OpsConfig
		err   string
	}{
		{
			name: "all",
			input: `ws_balancer 127.0.0.1:1 {
				drain_close_rate 100/s
				shutdown_grace 5s
				idle_timeout 2m
				origins https://app.example.com *.example.org
				max_conns_per_ip 50
				upgrade_rate 600/m 20
				rebalance {
					ratio 1.5
					after 1m
					rate 5/s
				}
			}`,
			want: OpsConfig{
				DrainCloseRate: 100, ShutdownGrace: caddy.Duration(5 * time.Second),
				IdleTimeout: caddy.Duration(2 * time.Minute), Origins: []string{"https://app.example.com", "*.example.org"},
				MaxConnsPerIP: 50, UpgradeRate: 10, UpgradeBurst: 20,
				Rebalance: &RebalanceConfig{Ratio: 1.5, After: caddy.Duration(time.Minute), Rate: 5},
			},
		},
		{name: "plain rate", input: "ws_balancer 127.0.0.1:1 {\n drain_close_rate 25\n}", want: OpsConfig{DrainCloseRate: 25}},
		{name: "empty rebalance", input: "ws_balancer 127.0.0.1:1 {\n rebalance\n}", want: OpsConfig{Rebalance: &RebalanceConfig{}}},
		{name: "bad rate", input: "ws_balancer {\n drain_close_rate fast\n}", err: "not a positive rate"},
		{name: "zero rate", input: "ws_balancer {\n drain_close_rate 0/s\n}", err: "not a positive rate"},
		{name: "rate extra arg", input: "ws_balancer {\n drain_close_rate 1/s 2\n}", err: "wrong argument count"},
		{name: "no origins", input: "ws_balancer {\n origins\n}", err: "wrong argument count"},
		{name: "bad burst", input: "ws_balancer {\n upgrade_rate 1/s x\n}", err: "burst"},
		{name: "bad ratio", input: "ws_balancer {\n rebalance {\n ratio 0.9\n }\n}", err: "above 1"},
		{name: "unknown rebalance opt", input: "ws_balancer {\n rebalance {\n speed 1\n }\n}", err: "unrecognized rebalance option"},
		{name: "twice", input: "ws_balancer {\n idle_timeout 1s\n idle_timeout 2s\n}", err: "given twice"},
		{name: "bad idle", input: "ws_balancer {\n idle_timeout soon\n}", err: "not a valid duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			if !reflect.DeepEqual(h.OpsConfig, tc.want) {
				t.Errorf("got %+v, want %+v", h.OpsConfig, tc.want)
			}
		})
	}
}

func TestOpsValidate(t *testing.T) {
	for _, c := range []OpsConfig{
		{DrainCloseRate: -1}, {IdleTimeout: -1}, {MaxConnsPerIP: -1}, {UpgradeBurst: 3},
		{Origins: []string{"[bad"}}, {Rebalance: &RebalanceConfig{Ratio: 1}},
	} {
		if err := c.validate(); err == nil {
			t.Errorf("%+v validated", c)
		}
	}
	if err := (&OpsConfig{UpgradeRate: 1, UpgradeBurst: 3, Origins: []string{"*"}}).validate(); err != nil {
		t.Error(err)
	}
}

func TestOriginAllowed(t *testing.T) {
	pats := []string{"https://app.example.com", "*.example.org", "localhost:*"}
	for origin, want := range map[string]bool{
		"https://app.example.com":      true,
		"HTTPS://APP.EXAMPLE.COM":      true,
		"http://app.example.com":       false,
		"https://app.example.com:8443": false,
		"https://a.example.org":        true,
		"https://example.org":          false,
		"https://a.b.example.org":      true, // * spans dots, as path.Match does
		"http://localhost:3000":        true,
		"null":                         false,
	} {
		if got := originAllowed(pats, origin); got != want {
			t.Errorf("originAllowed(%q) = %v, want %v", origin, got, want)
		}
	}
	if !originAllowed([]string{"*"}, "null") {
		t.Error(`"*" does not allow everything`)
	}
}

func TestIPCounts(t *testing.T) {
	c := newIPCounts()
	for range 3 {
		if !c.acquire("10.0.0.1", 3) {
			t.Fatal("refused under the limit")
		}
	}
	if c.acquire("10.0.0.1", 3) {
		t.Fatal("accepted over the limit")
	}
	if !c.acquire("10.0.0.2", 3) {
		t.Fatal("other IP refused")
	}
	c.release("10.0.0.1")
	if !c.acquire("10.0.0.1", 3) {
		t.Fatal("released slot not reusable")
	}
	for range 3 {
		c.release("10.0.0.1")
	}
	c.release("10.0.0.2")
	for i := range c.shards {
		if len(c.shards[i].m) != 0 {
			t.Fatalf("entries left at zero: %v", c.shards[i].m)
		}
	}
}

func TestIPRates(t *testing.T) {
	r := newIPRates(2, 3)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if d := r.take("a", now); d != 0 {
			t.Fatalf("take %d within burst waited %v", i, d)
		}
	}
	d := r.take("a", now)
	if d <= 0 || d > 500*time.Millisecond {
		t.Fatalf("over burst: wait %v, want (0, 500ms]", d)
	}
	if r.take("b", now) != 0 {
		t.Fatal("other IP limited")
	}
	// A refused request spends nothing: half a second later one token is back.
	if d := r.take("a", now.Add(500*time.Millisecond)); d != 0 {
		t.Fatalf("after refill: wait %v", d)
	}
	if got := balancer.RetryAfterSeconds(300 * time.Millisecond); got != "1" {
		t.Errorf("Retry-After %q, want 1", got)
	}
	if got := balancer.RetryAfterSeconds(2100 * time.Millisecond); got != "3" {
		t.Errorf("Retry-After %q, want 3", got)
	}
}

func TestRebalancePickVictim(t *testing.T) {
	mk := func(loads ...int64) []*balancer.Upstream {
		ups := make([]*balancer.Upstream, len(loads))
		for i, n := range loads {
			b := balancer.NewBackend(fmt.Sprintf("10.0.0.%d:80", i+1))
			b.ObserveReport(balancer.Report{Connections: n, Capacity: 0, Version: 1}, time.Now())
			ups[i] = &balancer.Upstream{Backend: b}
		}
		return ups
	}
	rb := newRebalancer(&RebalanceConfig{}, zap.NewNop())
	now := time.Now()
	for _, tc := range []struct {
		loads []int64
		want  int // index, -1 for none
	}{
		{[]int64{300, 300, 300, 0}, 0},
		{[]int64{100, 100, 100}, -1},
		{[]int64{110, 100, 90}, -1},
		{[]int64{270, 270, 270, 90}, -1}, // max/avg = 1.2
		{[]int64{271, 270, 270, 89}, 0},
		{[]int64{5}, -1},
		{[]int64{0, 0}, -1},
	} {
		ups := mk(tc.loads...)
		v := rb.pickVictim(ups, now)
		switch {
		case tc.want < 0 && v != nil:
			t.Errorf("%v: picked %s, want none", tc.loads, v.Addr())
		case tc.want >= 0 && v != ups[tc.want]:
			t.Errorf("%v: picked %v, want %s", tc.loads, v, ups[tc.want].Addr())
		}
	}
	// A draining backend is left out of the average.
	ups := mk(300, 100, 100)
	ups[0].SetDrainedByOperator(true)
	if v := rb.pickVictim(ups, now); v != nil {
		t.Errorf("picked %s with the loaded one draining", v.Addr())
	}
}

func TestOpsJSONIsFlat(t *testing.T) {
	var h Handler
	in := `{"backends":["127.0.0.1:1"],"drain_close_rate":100,"idle_timeout":"1m","max_conns_per_ip":5,"rebalance":{"ratio":1.5}}`
	if err := json.Unmarshal([]byte(in), &h); err != nil {
		t.Fatal(err)
	}
	if h.DrainCloseRate != 100 || h.IdleTimeout != caddy.Duration(time.Minute) || h.MaxConnsPerIP != 5 || h.Rebalance.Ratio != 1.5 {
		t.Errorf("decoded %+v", h.OpsConfig)
	}
}

func TestUnmarshalStatusCaddyfile(t *testing.T) {
	var s StatusHandler
	if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ws_balancer_status {\n interval 1s\n history 5m\n}")); err != nil {
		t.Fatal(err)
	}
	if s.Interval != caddy.Duration(time.Second) || s.History != caddy.Duration(5*time.Minute) {
		t.Errorf("got %+v", s)
	}
	for _, bad := range []string{"ws_balancer_status x", "ws_balancer_status {\n color red\n}", "ws_balancer_status {\n interval\n}"} {
		var s StatusHandler
		if err := s.UnmarshalCaddyfile(caddyfile.NewTestDispenser(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
	if err := (&StatusHandler{Interval: caddy.Duration(time.Millisecond), History: caddy.Duration(time.Minute)}).Validate(); err == nil {
		t.Error("1ms interval validated")
	}
}
