package affinity

import (
	"fmt"
	"math/rand/v2"
	"testing"
)

// benchCandidates is a fleet at work: loads around 400 with some spread, one
// backend in ten ineligible, and capacities known when weighted.
func benchCandidates(r *Ring, weighted bool) []Candidate {
	rnd := rand.New(rand.NewPCG(7, 7))
	cands := make([]Candidate, r.Len())
	for i := range cands {
		cands[i] = Candidate{ID: r.ID(i), Load: 300 + rnd.Int64N(200), Eligible: i%10 != 9}
		if weighted {
			cands[i].Weight = float64(1000 * (1 + i%4))
		}
	}
	return cands
}

func benchKeys() []string {
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = fmt.Sprint("room-", i)
	}
	return keys
}

func BenchmarkPick(b *testing.B) {
	keys := benchKeys()
	for _, n := range []int{10, 100, 1000} {
		for _, weighted := range []bool{false, true} {
			name := fmt.Sprintf("backends=%d", n)
			if weighted {
				name += "/weighted"
			}
			b.Run(name, func(b *testing.B) {
				r := mustRing(b, backendIDs("chat", n))
				cands := benchCandidates(r, weighted)
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					if _, ok := r.Pick(keys[i&1023], cands, Options{}); !ok {
						b.Fatal("no pick")
					}
					i++
				}
			})
		}
	}
}

// BenchmarkPickHotKey is the worst ordinary case: the key's first backends
// are all at their bound, so the walk goes on past many points.
func BenchmarkPickHotKey(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			r := mustRing(b, backendIDs("chat", n))
			cands := benchCandidates(r, false)
			for i := range cands {
				cands[i].Load = 400
			}
			// The key's first five distinct backends are far over the
			// bound (with 10 backends, 5 × 10,000 against 4 × 400 puts
			// it at 7,167).
			for _, i := range walk(r, "hot")[:5] {
				cands[i].Load = 10000
			}
			b.ReportAllocs()
			for b.Loop() {
				if c, _ := r.Pick("hot", cands, Options{}); c.Main {
					b.Fatal("hot key not spilled")
				}
			}
		})
	}
}

func BenchmarkLeastLoaded(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			r := mustRing(b, backendIDs("chat", n))
			cands := benchCandidates(r, true)
			rnd := rand.New(rand.NewPCG(1, 1))
			b.ReportAllocs()
			for b.Loop() {
				LeastLoaded(cands, rnd)
			}
		})
	}
}

func BenchmarkNewRing(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			ids := backendIDs("chat", n)
			b.ReportAllocs()
			for b.Loop() {
				if _, err := NewRing(ids); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCookieMatch(b *testing.B) {
	for _, n := range []int{10, 100, 1000} {
		b.Run(fmt.Sprintf("backends=%d", n), func(b *testing.B) {
			c, err := NewCookies([]byte("0123456789abcdef0123456789abcdef"), backendIDs("chat", n))
			if err != nil {
				b.Fatal(err)
			}
			v := c.Value(n / 2)
			b.ReportAllocs()
			for b.Loop() {
				if _, ok := c.Match(v); !ok {
					b.Fatal("no match")
				}
			}
		})
	}
}
