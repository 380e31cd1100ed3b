package affinity

import (
	"math/rand/v2"
	"testing"
)

func TestLeastLoaded(t *testing.T) {
	up := func(load int64, weight float64) Candidate {
		return Candidate{Load: load, Weight: weight, Eligible: true}
	}
	for _, tc := range []struct {
		name  string
		cands []Candidate
		want  []int // acceptable picks; nil: none
	}{
		{"none", nil, nil},
		{"none eligible", []Candidate{{Load: 0}, {Load: 1}}, nil},
		{"lowest raw count without weights", []Candidate{up(5, 0), up(2, 0), up(7, 0)}, []int{1}},
		{"lowest load per weight", []Candidate{up(30, 4), up(10, 1)}, []int{0}},            // 7.5 against 10
		{"capacities in any unit", []Candidate{up(3000, 20000), up(1000, 5000)}, []int{0}}, // 0.15 against 0.2
		{"proportional loads tie", []Candidate{up(400, 4), up(200, 2), up(100, 1)}, []int{0, 1, 2}},
		{"unknown weight counts as the mean", []Candidate{up(40, 6), up(20, 2), up(30, 0)}, []int{0}}, // 6.67, 10, and 30/4 = 7.5
		{"ineligible skipped", []Candidate{{Load: 0}, up(5, 0)}, []int{1}},
		{"negative load counts as 0", []Candidate{up(-3, 0), up(0, 0)}, []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rnd := rand.New(rand.NewPCG(1, 2))
			seen := map[int]int{}
			for range 300 {
				seen[LeastLoaded(tc.cands, rnd)]++
			}
			if tc.want == nil {
				if seen[-1] != 300 {
					t.Errorf("picks %v, want none", seen)
				}
				return
			}
			for _, i := range tc.want {
				if seen[i] == 0 {
					t.Errorf("picks %v: never %d", seen, i)
				}
			}
			if len(seen) != len(tc.want) {
				t.Errorf("picks %v, want only %v", seen, tc.want)
			}
		})
	}
}

func TestLeastLoadedBreaksTiesUniformly(t *testing.T) {
	const picks = 30000
	cands := []Candidate{{Eligible: true}, {Eligible: true}, {Eligible: true}}
	rnd := rand.New(rand.NewPCG(5, 6))
	var seen [3]int
	for range picks {
		seen[LeastLoaded(cands, rnd)]++
	}
	for i, n := range seen {
		if n < picks/3*9/10 || n > picks/3*11/10 {
			t.Errorf("backend %d first on %d of %d ties, want about a third: %v", i, n, picks, seen)
		}
	}
}

func TestLeastLoadedFillsCapacitiesInProportion(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []float64
		conns   int
		want    []int64
	}{
		{"capacities 4:2:1", []float64{4, 2, 1}, 700, []int64{400, 200, 100}},
		{"reported capacities 20000:10000:5000", []float64{20000, 10000, 5000}, 700, []int64{400, 200, 100}},
		{"no capacity known fills evenly", []float64{0, 0, 0}, 600, []int64{200, 200, 200}},
		{"one unknown among 4:2", []float64{4, 2, 0}, 900, []int64{400, 200, 300}}, // the unknown counts as 3
	} {
		t.Run(tc.name, func(t *testing.T) {
			cands := make([]Candidate, len(tc.weights))
			for i, w := range tc.weights {
				cands[i] = Candidate{Weight: w, Eligible: true}
			}
			for range tc.conns {
				cands[LeastLoaded(cands, nil)].Load++
			}
			t.Logf("loads %d:%d:%d", cands[0].Load, cands[1].Load, cands[2].Load)
			for i, want := range tc.want {
				if got := cands[i].Load; got < want*9/10 || got > want*11/10 {
					t.Errorf("backend %d holds %d, want %d ± 10%%", i, got, want)
				}
			}
		})
	}
}
