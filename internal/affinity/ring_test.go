package affinity

import (
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// backendIDs returns n IDs shaped like Consul service IDs.
func backendIDs(prefix string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return ids
}

func mustRing(t testing.TB, ids []string) *Ring {
	t.Helper()
	r, err := NewRing(ids)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// arcShares is the exact share of the hash space each member owns: the arc
// that ends at each of its points.
func arcShares(r *Ring) []float64 {
	shares := make([]float64, r.Len())
	prev := r.points[len(r.points)-1]
	for k, p := range r.points {
		shares[r.owners[k]] += float64(p-prev) / math.Exp2(64) // wraps at k == 0
		prev = p
	}
	return shares
}

func maxOverMean(xs []float64) float64 {
	top, sum := 0.0, 0.0
	for _, x := range xs {
		top = max(top, x)
		sum += x
	}
	return top / (sum / float64(len(xs)))
}

func TestRingSpreadsKeysEvenly(t *testing.T) {
	for _, tc := range []struct {
		backends int
		maxRatio float64 // busiest backend's share of the key space ÷ the mean
	}{
		{3, 1.15},
		{10, 1.2},
		{50, 1.25},
		{1000, 1.35},
	} {
		t.Run(fmt.Sprint(tc.backends, " backends"), func(t *testing.T) {
			got := maxOverMean(arcShares(mustRing(t, backendIDs("chat", tc.backends))))
			if got > tc.maxRatio {
				t.Errorf("busiest backend owns %.3f× the mean share, want ≤ %.2f", got, tc.maxRatio)
			}
		})
	}
}

// TestRingSpreadByVNodes is the measurement behind DefaultVNodes: the
// busiest backend's share of keys over the mean, for several ring sizes,
// averaged over 20 sets of IDs (the table in docs/affinity.md; -v prints
// it). More virtual nodes must even the ring out at every size: that is
// what DefaultVNodes buys with its memory.
func TestRingSpreadByVNodes(t *testing.T) {
	sizes := []int{10, 50, 200}
	var b strings.Builder
	fmt.Fprintf(&b, "\n| vnodes | 10 backends | 50 backends | 200 backends |\n|---|---|---|---|\n")
	prev := make([]float64, len(sizes))
	for _, vn := range []int{50, 100, 160, 200, 500} {
		fmt.Fprintf(&b, "| %d |", vn)
		for i, n := range sizes {
			sum := 0.0
			for set := range 20 {
				r, err := newRing(backendIDs(fmt.Sprint("set", set), n), nil, vn)
				if err != nil {
					t.Fatal(err)
				}
				sum += maxOverMean(arcShares(r))
			}
			spread := sum / 20
			fmt.Fprintf(&b, " %.3f |", spread)
			if prev[i] != 0 && spread >= prev[i] {
				t.Errorf("%d backends: %d vnodes spread %.3f, no better than fewer vnodes' %.3f", n, vn, spread, prev[i])
			}
			prev[i] = spread
		}
		b.WriteByte('\n')
	}
	t.Log(b.String())
}

func TestRingMapsKeysIdenticallyWhateverTheMemberOrder(t *testing.T) {
	ids := backendIDs("chat", 50)
	shuffled := append([]string(nil), ids...)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	a, b := mustRing(t, ids), mustRing(t, shuffled)
	for k := range 10000 {
		key := fmt.Sprint("room-", k)
		if ida, idb := a.ID(a.Owner(key)), b.ID(b.Owner(key)); ida != idb {
			t.Fatalf("key %q: %s on one ring, %s on the other", key, ida, idb)
		}
	}
}

// TestRingMappingIsPinned fixes where keys go, so that a change to the
// hashing scheme (which would split keys between balancers of two releases
// during a rolling upgrade) cannot pass unnoticed.
func TestRingMappingIsPinned(t *testing.T) {
	r := mustRing(t, []string{"chat-a", "chat-b", "chat-c", "10.0.0.7:8080", "10.0.0.8:8080"})
	for _, tc := range []struct{ key, want string }{
		{"", "10.0.0.7:8080"},
		{"room-1", "chat-c"},
		{"room-2", "chat-a"},
		{"tenant/acme", "chat-c"},
		{"match:42", "10.0.0.7:8080"},
	} {
		if got := r.ID(r.Owner(tc.key)); got != tc.want {
			t.Errorf("key %q goes to %s, pinned to %s", tc.key, got, tc.want)
		}
	}
}

func TestRingMovesAboutOneNthOfKeysOnJoinAndLeave(t *testing.T) {
	const keys = 20000
	for _, tc := range []struct {
		name   string
		before []string
		after  []string
	}{
		{"10 backends, one leaves", backendIDs("chat", 10), backendIDs("chat", 10)[1:]},
		{"10 backends, one joins", backendIDs("chat", 10), backendIDs("chat", 11)},
		{"50 backends, one leaves", backendIDs("chat", 50), append(backendIDs("chat", 50)[:20:20], backendIDs("chat", 50)[21:]...)},
		{"50 backends, one joins", backendIDs("chat", 50), backendIDs("chat", 51)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before, after := mustRing(t, tc.before), mustRing(t, tc.after)
			changed := symmetricDifference(tc.before, tc.after)
			n := max(len(tc.before), len(tc.after))
			moved := 0
			for k := range keys {
				key := fmt.Sprint("room-", k)
				was, is := before.ID(before.Owner(key)), after.ID(after.Owner(key))
				if was == is {
					continue
				}
				moved++
				// Consistency: only keys of the backend that left move,
				// and only to the backend that joined.
				if was != changed && is != changed {
					t.Fatalf("key %q moved from %s to %s, neither of which changed", key, was, is)
				}
			}
			share := float64(moved) / keys
			t.Logf("%.2f%% of keys moved (1/n = %.2f%%)", 100*share, 100/float64(n))
			if want := 1 / float64(n); share < want/2 || share > want*1.5 {
				t.Errorf("%.2f%% of keys moved, want about 1/n = %.2f%%", 100*share, 100*want)
			}
		})
	}
}

// symmetricDifference returns the one ID in exactly one of a and b.
func symmetricDifference(a, b []string) string {
	count := map[string]int{}
	for _, id := range a {
		count[id]++
	}
	for _, id := range b {
		count[id]--
	}
	for id, c := range count {
		if c != 0 {
			return id
		}
	}
	return ""
}

func TestRingRejectsBadMembers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		ids     []string
		weights []float64
	}{
		{"empty ID", []string{"a", ""}, nil},
		{"duplicate ID", []string{"a", "b", "a"}, nil},
		{"weights of another length", []string{"a", "b"}, []float64{1}},
		{"negative weight", []string{"a", "b"}, []float64{1, -1}},
		{"NaN weight", []string{"a", "b"}, []float64{1, math.NaN()}},
		{"infinite weight", []string{"a", "b"}, []float64{1, math.Inf(1)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.weights == nil {
				_, err = NewRing(tc.ids)
			} else {
				_, err = NewWeightedRing(tc.ids, tc.weights)
			}
			if err == nil {
				t.Error("built a ring, want an error")
			}
		})
	}
}

func TestEmptyRingOwnsNothing(t *testing.T) {
	r := mustRing(t, nil)
	if got := r.Owner("room"); got != -1 {
		t.Errorf("Owner on an empty ring = %d, want -1", got)
	}
	if _, ok := r.Pick("room", nil, Options{}); ok {
		t.Error("Pick on an empty ring succeeded")
	}
}

func TestWeightedRingSharesKeysByWeight(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []float64
		want    []float64 // expected share of the key space
	}{
		{"4:2:1", []float64{4, 2, 1}, []float64{4.0 / 7, 2.0 / 7, 1.0 / 7}},
		{"capacities 20000 and 5000", []float64{20000, 5000}, []float64{0.8, 0.2}},
		{"unknown counts as the mean", []float64{3, 1, 0}, []float64{3.0 / 6, 1.0 / 6, 2.0 / 6}},
		{"none known is unweighted", []float64{0, 0, 0, 0}, []float64{0.25, 0.25, 0.25, 0.25}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewWeightedRing(backendIDs("chat", len(tc.weights)), tc.weights)
			if err != nil {
				t.Fatal(err)
			}
			for i, got := range arcShares(r) {
				if math.Abs(got-tc.want[i]) > 0.15*tc.want[i] {
					t.Errorf("backend %d owns %.3f of the keys, want %.3f ± 15%%", i, got, tc.want[i])
				}
			}
		})
	}
}
