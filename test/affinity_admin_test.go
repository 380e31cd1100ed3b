package test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// With affinity on, GET /ws_balancer/backends shows each backend's bound,
// ⌈c · (total + 1) · wᵢ / Σw⌉ over the backends that can take connections,
// and 0 for one that cannot (drained); without affinity, no bound at all.
func TestAffinityAdminShowsBound(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	_, ids := namedEchoes(t, 3)
	weights := []int64{4, 2, 1}
	// c = 1.5 = 3/2, so that the expected bound is exact integer arithmetic:
	// ⌈3 · (total + 1) · wᵢ / (2 · Σw)⌉.
	site := fmt.Sprintf("\tws_balancer /ws {\n\t\tbackends %s\n\t\tweights 4 2 1\n\t\taffinity {query.room} {\n\t\t\tbalance_factor 1.5\n\t\t}\n\t}\n",
		strings.Join(ids, " "))
	c := harness.StartCaddy(t, site)
	for k := range 20 {
		conn, _, _, err := connectRoom(ctx, c, fmt.Sprintf("room-%d", k), nil)
		if err != nil {
			t.Fatalf("room-%d: %v", k, err)
		}
		t.Cleanup(func() { conn.Close() })
	}

	// check compares the listed bounds with the formula over the listed
	// loads, for the backends eligible (not drained).
	check := func(what string, drained map[string]bool) {
		t.Helper()
		list, _ := adminBackends(t, c)
		if len(list) != len(ids) {
			t.Fatalf("%s: %d backends listed, want %d: %+v", what, len(list), len(ids), list)
		}
		byID := map[string]adminBackend{}
		for _, b := range list {
			byID[b.ID] = b
		}
		var total, sumW int64
		for i, id := range ids {
			if !drained[id] {
				total += byID[id].Load
				sumW += weights[i]
			}
		}
		var got, want []int64
		for i, id := range ids {
			b := byID[id]
			if b.Bound == nil {
				t.Fatalf("%s: backend %s has no bound: %+v", what, id, b)
			}
			w := int64(0)
			if !drained[id] {
				num, den := 3*(total+1)*weights[i], 2*sumW
				w = (num + den - 1) / den
			}
			got, want = append(got, *b.Bound), append(want, w)
		}
		var loads []int64
		for _, id := range ids {
			loads = append(loads, byID[id].Load)
		}
		t.Logf("%s: loads %v, bounds %v (want %v)", what, loads, got, want)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("%s: bounds %v, want %v", what, got, want)
		}
	}
	if !harness.WaitFor(ctx, 10*time.Second, func() bool {
		s, err := c.Backends()
		return err == nil && s.TotalLive == 20
	}) {
		t.Fatal("the 20 connections are not all counted")
	}
	check("20 connections, weights 4:2:1, balance_factor 1.5", nil)

	status, body, err := c.Admin(http.MethodPost, "/ws_balancer/backends/"+url.PathEscape(ids[0])+"/drain")
	if err != nil || status != http.StatusOK {
		t.Fatalf("draining %s: %d %s, %v", ids[0], status, body, err)
	}
	check("largest backend drained", map[string]bool{ids[0]: true})

	// Without affinity the field is absent.
	if err := c.Reload(fmt.Sprintf("\tws_balancer /ws {\n\t\tbackends %s\n\t\tweights 4 2 1\n\t}\n", strings.Join(ids, " "))); err != nil {
		t.Fatal(err)
	}
	if !harness.WaitFor(ctx, 10*time.Second, func() bool {
		_, raw := adminBackends(t, c)
		for _, b := range raw {
			if _, ok := b["bound"]; ok {
				return false
			}
		}
		return len(raw) > 0
	}) {
		_, raw := adminBackends(t, c)
		t.Errorf("without affinity, the admin API still shows bounds: %v", raw)
	}
}
