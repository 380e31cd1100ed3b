package balancer

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/affinity"
)

// Weighted least connections fills backends in proportion to their
// weights, static or reported, and an unknown weight counts as the mean.
func TestLeastLoadedWeighted(t *testing.T) {
	now := time.Now()
	for _, tc := range []struct {
		name    string
		weights []int64 // 0: unknown
		want    []int64
	}{
		{"static 4:2:1", []int64{4, 2, 1}, []int64{400, 200, 100}},
		{"none known", []int64{0, 0, 0}, []int64{233, 233, 234}},
		{"mixed: unknown is the mean", []int64{3, 0, 1}, []int64{300, 200, 100}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ups := upstreamsWithLoads(make([]int64, len(tc.weights))...)
			for i, w := range tc.weights {
				ups[i].Weight = w
			}
			var total int64
			for _, w := range tc.want {
				total += w
			}
			for range total {
				LeastLoaded(ups, now, nil).live.Add(1)
			}
			for i, u := range ups {
				if d := u.Live() - tc.want[i]; d < -1 || d > 1 {
					t.Errorf("backend %d holds %d, want %d", i, u.Live(), tc.want[i])
				}
			}
		})
	}
	// Reported capacities weigh as static weights do.
	ups := upstreamsWithLoads(0, 0, 0)
	for i, c := range []int64{4000, 2000, 1000} {
		ups[i].ObserveReport(Report{Connections: 0, Capacity: c, Version: 1}, now)
	}
	for range 700 {
		LeastLoaded(ups, now, nil).live.Add(1)
	}
	if a, b, c := ups[0].Live(), ups[1].Live(), ups[2].Live(); a != 400 || b != 200 || c != 100 {
		t.Errorf("capacities 4:2:1 filled %d:%d:%d", a, b, c)
	}
}

func TestCmpProducts(t *testing.T) {
	const big = int64(1) << 62
	for _, tc := range []struct {
		a, b, c, d int64
		want       int
	}{
		{1, 2, 2, 1, 0}, {1, 3, 2, 1, 1}, {0, 5, 1, 1, -1},
		{big, 4, big, 3, 1}, {big, 3, big, 4, -1},
	} {
		if got := cmpProducts(tc.a, tc.b, tc.c, tc.d); got != tc.want {
			t.Errorf("cmpProducts(%d,%d,%d,%d) = %d, want %d", tc.a, tc.b, tc.c, tc.d, got, tc.want)
		}
	}
}

func affinityUpstreams(n int) []*Upstream {
	ups := make([]*Upstream, n)
	for i := range ups {
		b := NewBackend(fmt.Sprintf("10.0.0.%d:8080", i+1))
		ups[i] = &Upstream{Backend: b, ID: b.Addr()}
	}
	return ups
}

func testAffinityPicker(cookie bool) *affinityPicker {
	o := &AffinityOptions{Key: func(r *http.Request) string { return r.URL.Query().Get("room") }}
	if cookie {
		o.CookieName, o.CookieKey = "wsb", []byte("0123456789abcdef0123")
	}
	return newAffinityPicker(o, LeastLoaded, zap.NewNop())
}

// A key goes to its main backend (the ring's, as internal/affinity maps
// it), the cookie brings a client back, a retry walks on, and a forged
// cookie is ignored.
func TestAffinityPick(t *testing.T) {
	now := time.Now()
	ups := affinityUpstreams(5)
	ids := make([]string, len(ups))
	for i, u := range ups {
		ids[i] = u.ID
	}
	ring, err := affinity.NewRing(ids)
	if err != nil {
		t.Fatal(err)
	}
	a := testAffinityPicker(true)
	req := func(room, cookie string) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/?room="+room, nil)
		if cookie != "" {
			r.AddCookie(&http.Cookie{Name: "wsb", Value: cookie})
		}
		return r
	}
	cands := make([]affinity.Candidate, len(ups))
	for i := range cands {
		cands[i] = affinity.Candidate{ID: ids[i], Eligible: true}
	}
	main, _ := ring.Pick("lobby", cands, affinity.Options{})

	s := a.begin(req("lobby", ""))
	u := s.pick(ups, now, nil)
	if u != ups[main.Index] || s.outcome != AffinityMain {
		t.Fatalf("picked %s (%s), want main %s", u.ID, s.outcome, ids[main.Index])
	}
	c := s.chosen(u)
	if c == nil || !c.HttpOnly || c.Path != "/" || c.SameSite != http.SameSiteLaxMode || c.Secure {
		t.Fatalf("cookie %v", c)
	}
	// Another room whose main differs, with lobby's cookie: the cookie wins.
	other := ""
	for i := range 100 {
		k := fmt.Sprint("room", i)
		if ch, _ := ring.Pick(k, cands, affinity.Options{}); ch.Index != main.Index {
			other = k
			break
		}
	}
	s = a.begin(req(other, c.Value))
	if u2 := s.pick(ups, now, nil); u2 != u || s.outcome != AffinityCookie {
		t.Fatalf("cookie: picked %s (%s), want %s", u2.ID, s.outcome, u.ID)
	}
	if s.chosen(u) != nil {
		t.Error("cookie set again although the client has it")
	}
	// Drained by an operator: the cookie is not honoured.
	u.SetDrainedByOperator(true)
	s = a.begin(req(other, c.Value))
	if u2 := s.pick(ups, now, nil); u2 == u || s.outcome == AffinityCookie {
		t.Fatalf("cookie honoured for a drained backend")
	}
	u.SetDrainedByOperator(false)
	// Forged cookie: normal selection.
	s = a.begin(req("lobby", "AAAAAAAAAAAAAAAAAAAAAA"))
	if u2 := s.pick(ups, now, nil); u2 != u || s.outcome != AffinityMain {
		t.Fatalf("forged cookie: %s %s", u2.ID, s.outcome)
	}
	// A retry skips the failed backend and walks on.
	s = a.begin(req("lobby", ""))
	if u2 := s.pick(ups, now, func(x *Upstream) bool { return x == u }); u2 == u || u2 == nil {
		t.Fatalf("retry picked %v", u2)
	}
	// No key, no cookie: least loaded.
	for i, x := range ups {
		x.live.Store(int64(10 + i))
	}
	ups[3].live.Store(0)
	s = a.begin(req("", ""))
	if u2 := s.pick(ups, now, nil); u2 != ups[3] || s.outcome != "" {
		t.Fatalf("no key: picked %s", u2.ID)
	}
}

// The ring is built once per upstream list, not per request.
func TestAffinityRingCachedPerList(t *testing.T) {
	a := testAffinityPicker(false)
	ups := affinityUpstreams(4)
	r1 := a.ringFor(ups)
	if a.ringFor(ups) != r1 {
		t.Fatal("ring rebuilt for the same list")
	}
	ups2 := append([]*Upstream(nil), ups...)
	if a.ringFor(ups2) == r1 {
		t.Fatal("ring not rebuilt for a new list")
	}
}

func BenchmarkAffinityPick(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		ups := affinityUpstreams(n)
		for i, u := range ups {
			u.live.Store(int64(i % 7))
		}
		a := testAffinityPicker(true)
		r := httptest.NewRequest(http.MethodGet, "/?room=lobby", nil)
		now := time.Now()
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				s := a.begin(r)
				s.pick(ups, now, nil)
			}
		})
	}
}
