package affinity

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"slices"
	"strconv"

	"github.com/cespare/xxhash/v2"
)

// DefaultVNodes is how many points a backend of average weight gets on the
// ring. The spread of keys tightens as 1/√vnodes: with 160 points the busiest
// of 10, 50 and 200 backends owns 1.12×, 1.18× and 1.22× the average share of
// the keys (with 50 points 1.25×, 1.36×, 1.43×; with 500 points 1.07×, 1.11×,
// 1.13×; TestRingSpreadByVNodes measures it). 160 keeps that inside the 25%
// headroom of the default balance factor, while a ring of 1,000 backends
// stays at 160,000 points: 1.9 MB, rebuilt in milliseconds.
const DefaultVNodes = 160

// maxVNodeScale caps a weighted backend's points at this multiple of
// DefaultVNodes, so one absurd weight cannot blow the ring up.
const maxVNodeScale = 16

// Ring is an immutable consistent-hash ring over a set of backend IDs. Build
// a new one whenever membership changes; transient states (down, draining,
// full) are not membership but eligibility, given to Pick per call.
//
// A backend's points depend only on its ID (and weight, for a weighted ring):
// point j of backend id sits at xxh64(id + "#" + decimal(j)), and a key at
// xxh64(key). xxHash64 is a fixed, seedless function of the bytes, so every
// process, on every architecture and Go version, builds the same ring from
// the same IDs whatever their order; TestRingMappingIsPinned holds it to that,
// because balancers of two releases must agree during a rolling upgrade.
type Ring struct {
	ids    []string // members in the caller's order: Pick's candidates follow it
	points []uint64 // positions of every virtual node, ascending
	owners []int32  // owners[k] is the index in ids of the backend at points[k]
}

// NewRing builds a ring with DefaultVNodes points per backend. Member i of
// the ring is ids[i]: the candidates given to Pick and the indexes it returns
// follow this order. IDs must be non-empty and distinct.
func NewRing(ids []string) (*Ring, error) {
	return newRing(ids, nil, DefaultVNodes)
}

// NewWeightedRing builds a ring on which each backend owns a share of the
// keys proportional to its weight (its reported capacity, or a static
// weight): round(DefaultVNodes · w_i / mean w) points, at least 1 and at most
// 16 × DefaultVNodes. A weight of 0 means unknown and counts as the mean of
// the known ones, as in Pick. Use it when weights are known and stable: the
// bound of Pick is weighted either way, but on a plain ring a small backend
// owns as many keys as a big one and spills most of them. Every balancer must
// build the ring from the same weights to map keys identically. A weight
// change moves only the keys of the points it adds or removes (the mean moves
// too, so other backends may gain or lose a point or two).
func NewWeightedRing(ids []string, weights []float64) (*Ring, error) {
	if len(weights) != len(ids) {
		return nil, fmt.Errorf("building ring: %d weights for %d backends", len(weights), len(ids))
	}
	for i, w := range weights {
		if w < 0 || math.IsNaN(w) || math.IsInf(w, 0) {
			return nil, fmt.Errorf("building ring: backend %q: invalid weight %v", ids[i], w)
		}
	}
	return newRing(ids, weights, DefaultVNodes)
}

func newRing(ids []string, weights []float64, vnodes int) (*Ring, error) {
	seen := make(map[string]struct{}, len(ids))
	for _, id := range ids {
		if id == "" {
			return nil, errors.New("building ring: empty backend ID")
		}
		if _, dup := seen[id]; dup {
			return nil, fmt.Errorf("building ring: duplicate backend ID %q", id)
		}
		seen[id] = struct{}{}
	}
	counts := make([]int, len(ids))
	mean := meanKnown(weights)
	total := 0
	for i := range ids {
		counts[i] = vnodes
		if weights != nil {
			w := weights[i]
			if !knownWeight(w) {
				w = mean
			}
			counts[i] = min(max(1, int(math.Round(float64(vnodes)*w/mean))), maxVNodeScale*vnodes)
		}
		total += counts[i]
	}

	nodes := make([]vnode, 0, total)
	var buf []byte
	for i, id := range ids {
		for j := range counts[i] {
			buf = strconv.AppendInt(append(append(buf[:0], id...), '#'), int64(j), 10)
			nodes = append(nodes, vnode{xxhash.Sum64(buf), int32(i)})
		}
	}
	nodes = sortVNodes(nodes, ids)
	r := &Ring{
		ids:    slices.Clone(ids),
		points: make([]uint64, len(nodes)),
		owners: make([]int32, len(nodes)),
	}
	for k, n := range nodes {
		r.points[k], r.owners[k] = n.pos, n.owner
	}
	return r, nil
}

type vnode struct {
	pos   uint64
	owner int32
}

// sortVNodes returns nodes in ring order: by position, and two points on one
// position (a 64-bit collision) by ID rather than by the caller's order, so
// that the ring stays order-independent.
//
// Positions are hashes, uniform over 64 bits, so a counting sort on their top
// bits leaves about one point per bucket and an insertion sort finishes each
// bucket: linear time, about five times faster than slices.SortFunc for a
// ring of 1,000 backends, which keeps a rebuild on every membership change
// cheap.
func sortVNodes(nodes []vnode, ids []string) []vnode {
	if len(nodes) == 0 {
		return nodes
	}
	shift := 64 - bits.Len(uint(len(nodes)))
	start := make([]int32, 1<<(64-shift)+1) // start[b] is where bucket b begins
	for _, n := range nodes {
		start[n.pos>>shift+1]++
	}
	for b := 1; b < len(start); b++ {
		start[b] += start[b-1]
	}
	next := slices.Clone(start)
	out := make([]vnode, len(nodes))
	for _, n := range nodes {
		b := n.pos >> shift
		out[next[b]] = n
		next[b]++
	}
	for b := range len(start) - 1 {
		bucket := out[start[b]:start[b+1]]
		for i := 1; i < len(bucket); i++ {
			for j := i; j > 0 && vnodeLess(bucket[j], bucket[j-1], ids); j-- {
				bucket[j], bucket[j-1] = bucket[j-1], bucket[j]
			}
		}
	}
	return out
}

func vnodeLess(a, b vnode, ids []string) bool {
	return a.pos < b.pos || a.pos == b.pos && ids[a.owner] < ids[b.owner]
}

// meanKnown is the mean of the positive weights, or 1 when none is known.
func meanKnown(weights []float64) float64 {
	sum, n := 0.0, 0
	for _, w := range weights {
		if knownWeight(w) {
			sum += w
			n++
		}
	}
	if n == 0 {
		return 1
	}
	return sum / float64(n)
}

// Len is the number of backends on the ring.
func (r *Ring) Len() int { return len(r.ids) }

// ID returns the ID of member i.
func (r *Ring) ID(i int) string { return r.ids[i] }

// Owner returns the index of the backend whose point follows key's hash
// clockwise, regardless of load or eligibility: where the key goes when every
// backend is up and below its bound. It is -1 on an empty ring.
func (r *Ring) Owner(key string) int {
	if len(r.points) == 0 {
		return -1
	}
	return int(r.owners[r.search(hashKey(key))])
}

// search returns the index of the first point at or after h, wrapping past
// the top of the ring to the first point.
func (r *Ring) search(h uint64) int {
	k, _ := slices.BinarySearch(r.points, h)
	if k == len(r.points) {
		return 0
	}
	return k
}

func hashKey(key string) uint64 { return xxhash.Sum64String(key) }
