package affinity

import (
	"math"
	"math/big"
	"slices"
	"testing"
)

func TestBounds(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opt   Options
		cands []Candidate
		want  []int64
	}{
		{
			"paper's bound ⌈c·(total+1)/n⌉",
			Options{},
			[]Candidate{{Load: 3, Eligible: true}, {Load: 5, Eligible: true}, {Load: 0, Eligible: true}, {Load: 0, Eligible: true}},
			[]int64{3, 3, 3, 3}, // ⌈1.25·9/4⌉ = ⌈2.8125⌉
		},
		{
			"empty fleet",
			Options{},
			[]Candidate{{Eligible: true}, {Eligible: true}},
			[]int64{1, 1}, // ⌈1.25·1/2⌉
		},
		{
			"an integer product stays exact",
			Options{BalanceFactor: 1.1},
			[]Candidate{{Load: 9, Eligible: true}},
			[]int64{11}, // 1.1·10 is 11.000000000000002 in floating point
		},
		{
			"ineligible backends count for nothing",
			Options{},
			[]Candidate{{Load: 10, Eligible: true}, {Load: 1000}, {Load: 10, Eligible: true}},
			[]int64{14, 0, 14}, // ⌈1.25·21/2⌉ = ⌈13.125⌉
		},
		{
			"weights 4:2:1",
			Options{},
			[]Candidate{{Load: 400, Weight: 4, Eligible: true}, {Load: 200, Weight: 2, Eligible: true}, {Load: 99, Weight: 1, Eligible: true}},
			[]int64{500, 250, 125},
		},
		{
			"unknown weight counts as the mean of the known",
			Options{},
			[]Candidate{{Load: 0, Weight: 3000, Eligible: true}, {Load: 0, Weight: 1000, Eligible: true}, {Load: 799, Eligible: true}},
			[]int64{500, 167, 334}, // Σw = 6000: ⌈1000·3/6⌉, ⌈1000/6⌉, ⌈1000·2/6⌉
		},
		{
			"negative, NaN and infinite weights are unknown",
			Options{},
			[]Candidate{{Load: 0, Weight: -1, Eligible: true}, {Load: 0, Weight: math.NaN(), Eligible: true}, {Load: 0, Weight: math.Inf(1), Eligible: true}, {Load: 3, Weight: 0, Eligible: true}},
			[]int64{2, 2, 2, 2},
		},
		{
			"negative load counts as 0",
			Options{},
			[]Candidate{{Load: -5, Eligible: true}, {Load: 3, Eligible: true}},
			[]int64{3, 3}, // ⌈1.25·4/2⌉ = ⌈2.5⌉
		},
		{
			"floor raises small bounds",
			Options{MinBound: 4},
			[]Candidate{{Load: 1, Eligible: true}, {Load: 0, Eligible: true}},
			[]int64{4, 4},
		},
		{
			"floor changes nothing above it",
			Options{MinBound: 4},
			[]Candidate{{Load: 100, Eligible: true}, {Load: 100, Eligible: true}},
			[]int64{126, 126}, // ⌈1.25·201/2⌉ = ⌈125.625⌉
		},
		{
			"invalid factor counts as the default",
			Options{BalanceFactor: 0.5},
			[]Candidate{{Load: 3, Eligible: true}, {Load: 5, Eligible: true}, {Load: 0, Eligible: true}, {Load: 0, Eligible: true}},
			[]int64{3, 3, 3, 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Bounds(tc.cands, tc.opt, nil); !slices.Equal(got, tc.want) {
				t.Errorf("Bounds = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestBoundsMatchExactArithmetic checks the floating-point bound against
// integer arithmetic, the balance factor read as the decimal a user writes.
func TestBoundsMatchExactArithmetic(t *testing.T) {
	for _, factor := range []string{"1.01", "1.1", "1.15", "1.2", "1.25", "1.3", "1.5", "1.75", "2", "3"} {
		c, _ := new(big.Rat).SetString(factor)
		p, q := c.Num().Int64(), c.Denom().Int64() // c = p/q
		cf, _ := c.Float64()
		for _, n := range []int{1, 2, 3, 5, 7, 10, 33, 40} {
			for _, weights := range [][]int64{nil, {4, 2, 1}, {20000, 5000, 5000}, {3, 7}} {
				cands := make([]Candidate, n)
				sumW := int64(0)
				for i := range cands {
					cands[i] = Candidate{Eligible: true}
					if weights != nil {
						cands[i].Weight = float64(weights[i%len(weights)])
						sumW += weights[i%len(weights)]
					} else {
						sumW++
					}
				}
				var got []int64
				for total := int64(0); total <= 600; total++ {
					cands[0].Load = total
					got = Bounds(cands, Options{BalanceFactor: cf}, got)
					for i := range cands {
						w := int64(1)
						if weights != nil {
							w = weights[i%len(weights)]
						}
						// ⌈p·(total+1)·w / (q·Σw)⌉
						num, den := p*(total+1)*w, q*sumW
						if want := (num + den - 1) / den; got[i] != want {
							t.Fatalf("c=%s n=%d weights %v total %d: bound of %d is %d, want %d", factor, n, weights, total, i, got[i], want)
						}
					}
				}
			}
		}
	}
}

func TestValidateOptions(t *testing.T) {
	for _, tc := range []struct {
		opt Options
		ok  bool
	}{
		{Options{}, true},
		{Options{BalanceFactor: 1.25}, true},
		{Options{BalanceFactor: 1.0001}, true},
		{Options{BalanceFactor: 1}, false},
		{Options{BalanceFactor: 0.8}, false},
		{Options{BalanceFactor: -2}, false},
		{Options{BalanceFactor: math.NaN()}, false},
		{Options{BalanceFactor: math.Inf(1)}, false},
		{Options{MinBound: 8}, true},
		{Options{MinBound: -1}, false},
	} {
		if err := tc.opt.Validate(); (err == nil) != tc.ok {
			t.Errorf("Validate(%+v) = %v, want ok %v", tc.opt, err, tc.ok)
		}
	}
}
