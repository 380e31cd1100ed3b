package balancer

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// testKeys returns an Ed25519 signing key and its public half.
func testKeys(t testing.TB) (priv, pub token.Key) {
	t.Helper()
	_, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	priv, err = token.NewEd25519Key("", sk)
	if err != nil {
		t.Fatal(err)
	}
	return priv, priv.Public()
}

func testSigner(t testing.TB, key token.Key) *token.Signer {
	t.Helper()
	s, err := token.NewSigner(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// staticUpstreams returns upstreams over fresh backends for ws URLs, their
// IDs the hosts, with clk as the assignment clock.
func staticUpstreams(t testing.TB, clk *fakeClock, urls ...string) []*Upstream {
	t.Helper()
	ups := make([]*Upstream, len(urls))
	for i, s := range urls {
		u, err := ParseBackendURL(s)
		if err != nil {
			t.Fatal(err)
		}
		b := NewBackend(u.Host)
		if clk != nil {
			b.assigned.now = clk.Now
		}
		ups[i] = &Upstream{Backend: b, ID: u.Host, URL: u}
	}
	return ups
}

func poolOf(ups ...*Upstream) *Pool {
	p := new(Pool)
	p.Set(ups)
	return p
}

func newTestAssigner(t testing.TB, src UpstreamSource, opts AssignOptions) *Assigner {
	t.Helper()
	a, err := NewAssigner(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNewAssignerOptions(t *testing.T) {
	t.Parallel()
	priv, _ := testKeys(t)
	s := testSigner(t, priv)
	for _, tc := range []struct {
		name     string
		opts     AssignOptions
		err      string
		ttl      time.Duration
		wantHold time.Duration
	}{
		{name: "no signer", opts: AssignOptions{}, err: "Signer is required"},
		{name: "negative ttl", opts: AssignOptions{Signer: s, TTL: -time.Second}, err: "negative TTL"},
		{name: "hold too long", opts: AssignOptions{Signer: s, Hold: time.Hour}, err: "longer than"},
		{name: "defaults", opts: AssignOptions{Signer: s}, ttl: token.DefaultTTL, wantHold: DefaultAssignHold},
		{name: "short ttl bounds hold", opts: AssignOptions{Signer: s, TTL: 2 * time.Second}, ttl: 2 * time.Second, wantHold: 2 * time.Second},
		{name: "explicit hold", opts: AssignOptions{Signer: s, Hold: 20 * time.Second}, ttl: token.DefaultTTL, wantHold: 20 * time.Second},
		{name: "no hold", opts: AssignOptions{Signer: s, Hold: NoAssignHold}, ttl: token.DefaultTTL, wantHold: NoAssignHold},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := NewAssigner(new(Pool), tc.opts)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if a.TTL() != tc.ttl || a.Hold() != tc.wantHold {
				t.Fatalf("ttl, hold = %s, %s; want %s, %s", a.TTL(), a.Hold(), tc.ttl, tc.wantHold)
			}
		})
	}
}

func TestAssignIssuesVerifiableToken(t *testing.T) {
	t.Parallel()
	priv, pub := testKeys(t)
	ups := staticUpstreams(t, nil, "ws://10.0.0.1:9000/chat?room=1")
	ups[0].ID = "chat-1"
	a := newTestAssigner(t, poolOf(ups...), AssignOptions{Signer: testSigner(t, priv), TTL: 10 * time.Second})
	before := time.Now()
	asg, err := a.Assign("alice")
	if err != nil {
		t.Fatal(err)
	}
	if asg.Backend != "chat-1" {
		t.Errorf("backend = %q", asg.Backend)
	}
	u, err := url.Parse(asg.URL)
	if err != nil {
		t.Fatal(err)
	}
	if u.Scheme != "ws" || u.Host != "10.0.0.1:9000" || u.Path != "/chat" || u.Query().Get("room") != "1" {
		t.Errorf("url = %s", asg.URL)
	}
	if got := u.Query()["token"]; len(got) != 1 || got[0] != asg.Token {
		t.Errorf("url token %q, want the assignment's token", got)
	}
	if d := asg.ExpiresAt.Sub(before); d < 9*time.Second || d > 12*time.Second {
		t.Errorf("expires_at %s is %s after issue, want about 10s", asg.ExpiresAt, d)
	}
	v, err := token.NewVerifier(token.VerifierOptions{Keys: []token.Key{pub}, Audience: "chat-1"})
	if err != nil {
		t.Fatal(err)
	}
	c, err := v.Verify(asg.Token)
	if err != nil {
		t.Fatalf("verifying the assigned token: %v", err)
	}
	if c.Subject != "alice" || c.Audience != "chat-1" {
		t.Errorf("claims = %+v", c)
	}
	if n := ups[0].assigned.count(); n != 1 {
		t.Errorf("held assignments = %d, want 1", n)
	}
}

func TestAssignURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url, public string
		want              string // "" means the backend is unusable
	}{
		{"address only", "10.0.0.1:9000", "", "ws://10.0.0.1:9000/?token=T"},
		{"wss with path", "wss://b.example.com/ws", "", "wss://b.example.com/ws?token=T"},
		{"default port dropped", "ws://[::1]:80/ws", "", "ws://[::1]/ws?token=T"},
		{"other port kept", "wss://b.example.com:8443/ws", "", "wss://b.example.com:8443/ws?token=T"},
		{"public URL wins", "10.0.0.1:9000", "wss://chat-5.example.com/ws", "wss://chat-5.example.com/ws?token=T"},
		{"public without path", "10.0.0.1:9000", "ws://chat-5.example.com:81", "ws://chat-5.example.com:81/?token=T"},
		{"existing token replaced", "10.0.0.1:9000", "ws://h:1/ws?a=1&token=old&b=2&to%6Ben=x", "ws://h:1/ws?a=1&b=2&token=T"},
		{"fragment dropped", "10.0.0.1:9000", "ws://h:1/ws#frag", "ws://h:1/ws?token=T"},
		{"http public URL refused", "10.0.0.1:9000", "http://h:1/ws", ""},
		{"user info refused", "10.0.0.1:9000", "ws://u:p@h:1/ws", ""},
		{"relative refused", "10.0.0.1:9000", "/ws", ""},
		{"opaque refused", "10.0.0.1:9000", "ws:h:1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ups := staticUpstreams(t, nil, tc.url)
			ups[0].PublicURL = tc.public
			u, err := publicURL(ups[0])
			if tc.want == "" {
				if err == nil {
					t.Fatalf("publicURL = %s, want an error", u)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u.RawQuery = withQueryParam(u.RawQuery, "token", "T")
			if got := u.String(); got != tc.want {
				t.Fatalf("url = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestAssignSkipsUnusableBackends(t *testing.T) {
	t.Parallel()
	priv, _ := testKeys(t)
	ups := staticUpstreams(t, nil, "10.0.0.1:1", "10.0.0.2:1")
	ups[0].PublicURL = "http://wrong/"
	var outcomes []string
	var mu sync.Mutex
	a := newTestAssigner(t, poolOf(ups...), AssignOptions{Signer: testSigner(t, priv), OnOutcome: func(b, o string) {
		mu.Lock()
		outcomes = append(outcomes, b+":"+o)
		mu.Unlock()
	}})
	for range 10 {
		asg, err := a.Assign("")
		if err != nil {
			t.Fatal(err)
		}
		if asg.Backend != "10.0.0.2:1" {
			t.Fatalf("assigned to %s", asg.Backend)
		}
	}
	if n := ups[0].assigned.count(); n != 0 {
		t.Errorf("the unusable backend holds %d assignments, want 0", n)
	}
	ups[1].PublicURL = "ftp://wrong/"
	_, err := a.Assign("")
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusInternalServerError {
		t.Fatalf("err = %v, want a 500 *Error", err)
	}
	if last := outcomes[len(outcomes)-1]; last != ":"+OutcomeFailed {
		t.Errorf("last outcome %q", last)
	}
}

func TestAssignRespectsLimits(t *testing.T) {
	t.Parallel()
	priv, _ := testKeys(t)
	clk := newFakeClock()
	ups := staticUpstreams(t, clk, "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
	ups[0].MaxConns = 2
	ups[1].ObserveReport(Report{Connections: 3, Capacity: 4, Version: 1}, clk.Now()) // reported 3 of a capacity of 4
	ups[2].DrainAnnounced = true
	a := newTestAssigner(t, poolOf(ups...), AssignOptions{Signer: testSigner(t, priv), Hold: time.Second, RetryAfter: 2 * time.Second, Now: clk.Now})
	got := map[string]int{}
	for range 3 {
		asg, err := a.Assign("")
		if err != nil {
			t.Fatal(err)
		}
		got[asg.Backend]++
	}
	if got["10.0.0.1:1"] != 2 || got["10.0.0.2:1"] != 1 {
		t.Fatalf("assignments %v, want 2 to the max_conns 2 backend and 1 to the capacity 4 one", got)
	}
	_, err := a.Assign("")
	var e *Error
	if !errors.As(err, &e) || e.Status != http.StatusServiceUnavailable || e.Header.Get("Retry-After") != "2" {
		t.Fatalf("err = %v, want 503 with Retry-After 2", err)
	}
	ups[0].MarkDown(clk.Now(), time.Minute)
	clk.Advance(time.Second + recentResolution) // the holds lapse
	asg, err := a.Assign("")
	if err != nil {
		t.Fatal(err)
	}
	if asg.Backend != "10.0.0.2:1" {
		t.Fatalf("assigned to %s, want the only healthy, non-draining backend", asg.Backend)
	}
}

// Concurrent assignments never push a backend past its limit.
func TestAssignConcurrentLimit(t *testing.T) {
	t.Parallel()
	key, err := token.NewHMACKey("k", make([]byte, 32))
	if err != nil {
		t.Fatal(err)
	}
	ups := staticUpstreams(t, nil, "10.0.0.1:1", "10.0.0.2:1")
	for _, u := range ups {
		u.MaxConns = 50
	}
	a := newTestAssigner(t, poolOf(ups...), AssignOptions{Signer: testSigner(t, key), Hold: 50 * time.Second})
	var ok, refused atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for range 20 {
				if _, err := a.Assign(""); err == nil {
					ok.Add(1)
				} else {
					refused.Add(1)
				}
			}
		})
	}
	wg.Wait()
	if ok.Load() != 100 || refused.Load() != 220 {
		t.Fatalf("%d assigned, %d refused; want 100 and 220", ok.Load(), refused.Load())
	}
	for _, u := range ups {
		if n := u.Load(); n != 50 {
			t.Errorf("backend %s load %d, want 50", u.ID, n)
		}
	}
}

// One balancer alone spreads a burst exactly, whatever the reports say
// meanwhile: every assignment counts at once. The clock stands still, so
// that no hold lapses however long 3000 signatures take (15 s under -race
// on busy cores, past the 5 s hold).
func TestAssignBurstOneBalancer(t *testing.T) {
	t.Parallel()
	key, _ := token.NewHMACKey("k", make([]byte, 32))
	ups := staticUpstreams(t, newFakeClock(), "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
	a := newTestAssigner(t, poolOf(ups...), AssignOptions{Signer: testSigner(t, key)})
	got := map[string]int{}
	for range 3000 {
		asg, err := a.Assign("")
		if err != nil {
			t.Fatal(err)
		}
		got[asg.Backend]++
	}
	for id, n := range got {
		if n != 1000 {
			t.Errorf("backend %s got %d of 3000, want 1000", id, n)
		}
	}
}

// The policies compared in TestAssignSpreadSimulation.
var simPolicies = []struct {
	name   string
	hold   bool
	lag    time.Duration // AssignOptions.ReportLag
	choose func(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream
}{
	{"naive: minimum reported, first on ties", false, 0, firstLeast},
	{"naive: minimum reported, random ties", false, 0, LeastLoaded},
	{"held 5s, reports ignored, least loaded", true, -1, LeastLoaded},
	{"held, reports end holds, two choices", true, 0, TwoChoices},
	{"held, reports end holds, least loaded (default)", true, 0, LeastLoaded},
}

// firstLeast is the naive policy: the first available upstream with the
// lowest load.
func firstLeast(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	var best *Upstream
	for _, u := range ups {
		if (skip == nil || !skip(u)) && u.Available(now) && (best == nil || u.Load() < best.Load()) {
			best = u
		}
	}
	return best
}

// simScenario is a burst of assignments through several balancers to
// backends that publish their counts the way Reporter does.
type simScenario struct {
	name      string
	balancers int
	start     []int64       // connections the backends hold (and reported) at first
	burst     int           // assignments, evenly over ...
	over      time.Duration // ... this long; 0 means 1s
	connect   time.Duration // clients connect up to this long after their assignment; 0 means 50ms
	delay     time.Duration // a watch answer arrives this long after it was sent; 0 means 10ms
}

// simulate runs sc with one policy on a virtual clock in 1 ms steps and
// returns the backends' final counts. Each balancer has its own Backend
// state, as separate processes do. Clients connect within sc.connect of
// their assignment; backends publish when Reporter would (10%, 5
// connections, at most every 2 s); balancers watch as consul.Watcher does.
func simulate(t testing.TB, sc simScenario, policy int, seed uint64) []int64 {
	rng := mrand.New(mrand.NewPCG(seed, 1))
	key, _ := token.NewHMACKey("sim", make([]byte, 32))
	signer := testSigner(t, key)
	clk := newFakeClock()
	t0 := clk.Now()
	n := len(sc.start)
	conns := slices.Clone(sc.start)
	published := slices.Clone(sc.start)
	lastPub := make([]time.Time, n)
	for i := range lastPub {
		lastPub[i] = t0.Add(-time.Minute)
	}
	p := simPolicies[policy]
	over, connect := sc.over, sc.connect
	if over == 0 {
		over = time.Second
	}
	if connect == 0 {
		connect = 50 * time.Millisecond
	}
	delay := sc.delay
	if delay == 0 {
		delay = 10 * time.Millisecond
	}
	type balancer struct {
		ups []*Upstream
		a   *Assigner
	}
	bals := make([]balancer, sc.balancers)
	for i := range bals {
		ups := make([]*Upstream, n)
		for j := range ups {
			b := NewBackend(fmt.Sprintf("b%d:1", j))
			b.assigned.now = clk.Now
			b.ObserveReport(Report{Connections: sc.start[j], Capacity: 0, Version: 1}, t0)
			ups[j] = &Upstream{Backend: b, ID: b.Addr(), URL: &url.URL{Scheme: "ws", Host: b.Addr()}}
		}
		hold := time.Duration(0)
		if !p.hold {
			hold = NoAssignHold
		}
		bals[i] = balancer{ups, newTestAssigner(t, poolOf(ups...), AssignOptions{
			Signer: signer, Hold: hold, ReportLag: p.lag, Select: p.choose, Now: clk.Now,
		})}
	}
	// Each balancer watches like consul.Watcher: a blocking query answers
	// as soon as anything was published, queries are limited to 2 a second
	// (burst 2), and the answer, with every backend's latest publication,
	// arrives 10 ms after it was sent.
	type watch struct {
		tokens   float64
		seen     uint64 // the last publication taken in
		inFlight bool
		due      time.Duration
		counts   []int64
		versions []uint64
	}
	watches := make([]watch, len(bals))
	for i := range watches {
		watches[i].tokens = 2
	}
	versions := make([]uint64, n)
	for j := range versions {
		versions[j] = 1 // the version of the first reports
	}
	seq := uint64(1)
	connectAt := map[time.Duration][]int{}
	var reporter wsbackend.ReporterOptions
	const step = time.Millisecond
	for now := time.Duration(0); now < over+5*time.Second; now += step {
		// Assignments due in this step.
		from, to := int64(now)*int64(sc.burst)/int64(over), int64(now+step)*int64(sc.burst)/int64(over)
		for k := from; k < to && k < int64(sc.burst); k++ {
			b := bals[rng.IntN(len(bals))]
			asg, err := b.a.Assign("")
			if err != nil {
				t.Fatal(err)
			}
			j := int(asg.Backend[1] - '0')
			at := now + (connect/10+time.Duration(rng.Int64N(int64(connect*9/10))))/step*step
			connectAt[at] = append(connectAt[at], j)
		}
		for _, j := range connectAt[now] {
			conns[j]++
		}
		delete(connectAt, now)
		// Backends publish.
		for j := range conns {
			if reporter.Significant(published[j], conns[j]) && clk.Now().Sub(lastPub[j]) >= wsbackend.DefaultMinPublishInterval {
				published[j], lastPub[j] = conns[j], clk.Now()
				seq++
				versions[j] = seq
			}
		}
		// Balancers take them in.
		for i := range watches {
			w := &watches[i]
			w.tokens = min(2, w.tokens+2*step.Seconds())
			if w.inFlight && w.due <= now {
				for j, u := range bals[i].ups {
					u.ObserveReport(Report{Connections: w.counts[j], Capacity: 0, Version: w.versions[j]}, clk.Now())
				}
				w.inFlight = false
			}
			if !w.inFlight && seq > w.seen && w.tokens >= 1 {
				w.tokens--
				w.inFlight, w.due, w.seen = true, now+delay, seq
				w.counts, w.versions = slices.Clone(published), slices.Clone(versions)
			}
		}
		clk.Advance(step)
	}
	return conns
}

// spread is the largest deviation of the counts from an even split of their
// total, as a fraction of the even share.
func spread(counts []int64) float64 {
	var total int64
	for _, c := range counts {
		total += c
	}
	even := float64(total) / float64(len(counts))
	worst := 0.0
	for _, c := range counts {
		worst = max(worst, abs(float64(c)-even)/even)
	}
	return worst
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// TestAssignSpreadSimulation measures the policies on bursts through
// several balancers whose reports lag, and checks the default stays within
// ±10% of even where the naive policy herds.
func TestAssignSpreadSimulation(t *testing.T) {
	t.Parallel()
	scenarios := []simScenario{
		{"3000 in 1s, 2 balancers, 0/0/0", 2, []int64{0, 0, 0}, 3000, 0, 0, 0},
		{"3000 in 1s, 8 balancers, 0/0/0", 8, []int64{0, 0, 0}, 3000, 0, 0, 0},
		{"3000 in 10s, 2 balancers, 0/0/0", 2, []int64{0, 0, 0}, 3000, 10 * time.Second, 0, 0},
		{"3000 in 2.4s, 2 balancers, 0/0/0, connect ≤ 180ms", 2, []int64{0, 0, 0}, 3000, 2400 * time.Millisecond, 180 * time.Millisecond, 0},
		{"3000 in 2.8s, 2 balancers, 0/0/0, connect ≤ 160ms", 2, []int64{0, 0, 0}, 3000, 2800 * time.Millisecond, 160 * time.Millisecond, 0},
		{"3000 in 5s, 2 balancers, 0/0/0, connect ≤ 100ms", 2, []int64{0, 0, 0}, 3000, 5 * time.Second, 100 * time.Millisecond, 0},
		{"3000 in 6.6s, 2 balancers, 0/0/0, connect ≤ 1s", 2, []int64{0, 0, 0}, 3000, 6600 * time.Millisecond, time.Second, 0},
		{"3000 in 4s, 8 balancers, 0/0/0", 8, []int64{0, 0, 0}, 3000, 4 * time.Second, 0, 0},
		{"3000 in 1s, 2 balancers, 0/500/500", 2, []int64{0, 500, 500}, 3000, 0, 0, 0},
		{"600 in 1s, 2 balancers, 0/1000/1000 (new backend)", 2, []int64{0, 1000, 1000}, 600, 0, 0, 0},
	}
	runs := 3
	if testing.Short() {
		runs = 1
	}
	var table strings.Builder
	fmt.Fprintf(&table, "\n%-52s %-48s %-24s %s\n", "scenario", "policy", "final counts (run 1)", "worst deviation over runs")
	results := make([][]float64, len(scenarios))
	for si, sc := range scenarios {
		results[si] = make([]float64, len(simPolicies))
		for pi, p := range simPolicies {
			var first []int64
			worst := 0.0
			for r := range runs {
				got := simulate(t, sc, pi, uint64(r+1))
				if r == 0 {
					first = got
				}
				worst = max(worst, spread(got))
			}
			results[si][pi] = worst
			fmt.Fprintf(&table, "%-52s %-48s %-24s %5.1f%%\n", sc.name, p.name, fmt.Sprint(first), 100*worst)
		}
	}
	t.Log(table.String())
	const def = 4 // held, reports end holds, least loaded
	if w := results[0][def]; w > 0.10 {
		t.Errorf("default policy: worst deviation %.1f%% in %q, want within 10%%", 100*w, scenarios[0].name)
	}
	// Bursts that span report intervals, where reports reach the
	// balancers at different times (a busy machine stretches the
	// integration test's burst into these).
	for si := 2; si <= 7; si++ {
		if w := results[si][def]; w > 0.10 {
			t.Errorf("default policy: worst deviation %.1f%% in %q, want within 10%%", 100*w, scenarios[si].name)
		}
	}
	if w := results[0][0]; w < 0.5 {
		t.Errorf("naive policy: worst deviation %.1f%% in %q; the contrast should show herding", 100*w, scenarios[0].name)
	}
}

// BenchmarkAssign is the cost of one assignment: choosing among three
// backends, holding it, signing the token and building the URL.
func BenchmarkAssign(b *testing.B) {
	ed, _ := testKeys(b)
	hs, err := token.NewHMACKey("k", make([]byte, 32))
	if err != nil {
		b.Fatal(err)
	}
	for _, k := range []token.Key{ed, hs} {
		b.Run(string(k.Alg()), func(b *testing.B) {
			ups := staticUpstreams(b, nil, "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1")
			a := newTestAssigner(b, poolOf(ups...), AssignOptions{Signer: testSigner(b, k)})
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := a.Assign("user"); err != nil {
						b.Fatal(err)
					}
				}
			})
		})
	}
}
