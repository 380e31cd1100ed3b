package affinity

import (
	"container/heap"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
)

// This file is a simulated fleet: balancers that each choose with Pick over
// their own view of the loads, backends that report their counts the way
// wsbackend.Reporter does, clients that come and go, backends that join and
// leave. Time is simulated; nothing sleeps.

// viewMode is how a balancer knows the loads.
type viewMode int

const (
	// viewReported is this project's global view: the count a backend
	// last reported, as far as it has reached this balancer, plus this
	// balancer's own connections since the backend took that count
	// (balancer.Backend.Load).
	viewReported viewMode = iota
	// viewExact is an oracle: every balancer knows every true load.
	viewExact
	// viewOwn is what HAProxy's and Envoy's bounded-load hashing do: each
	// balancer bounds by its own connections only.
	viewOwn
	// viewScaled is viewReported with this balancer's change since the
	// report scaled by its TrafficShare (ScaledLoad): it stands for the
	// other balancers' changes, which the report does not show yet.
	viewScaled
	// viewDual is viewReported with Options.OwnBound: each balancer also
	// keeps its own connections to a backend under the bound of its own.
	viewDual
)

func (m viewMode) String() string {
	return [...]string{"reported + own since", "exact (oracle)", "own only (HAProxy, Envoy)", "reported + own since × share", "reported + own since, own under own bound"}[m]
}

type simParams struct {
	seed        uint64
	balancers   int
	backends    int
	keys        int
	zipfS       float64
	conns       int     // mean concurrent connections
	lifetime    float64 // mean connection lifetime, seconds (exponential)
	duration    float64 // simulated seconds after the warm start
	churnEvery  float64 // seconds between membership changes, leave and join alternating
	reconnect   float64 // clients of a backend that left reconnect within this many seconds
	publishMin  float64 // reporter: least seconds between publishes (× [1, 1.4))
	threshold   float64 // reporter: relative change published at once
	minStep     int64   // reporter: least absolute change published at once
	refresh     float64 // reporter: any change is published this long after the last publish
	watchMax    float64 // a publish reaches each balancer within this many seconds
	keyBalancer float64 // share of a key's connections arriving at the key's own balancer
	view        viewMode
	opt         Options
	sampleEvery float64
}

// simResult is what a run measured.
type simResult struct {
	params simParams

	placements   int
	overBound    int   // placements that left their backend above the true bound
	maxExcess    int64 // worst excess over the true bound, in connections
	sumExcess    int64
	maxOverRatio float64 // worst load ÷ true bound at a placement
	onMain       int     // placements on the key's true main backend
	failedDials  int     // picks of a backend that had left, not yet seen by the balancer

	samples       int
	sumMaxOverAvg float64 // max load ÷ average, summed over samples
	maxOverAvg    float64 // worst max load ÷ average in a sample
	sumMainShare  float64 // share of live connections on their key's main backend
	sumTogether   float64 // share of keys (≥ 2 connections) all on one backend
	leaves, joins int
	movedOnLeave  float64 // share of keys whose main backend changed, summed
	movedOnJoin   float64
}

type simConn struct {
	key, backend, balancer int
	open                   bool
	slot                   int // index in its backend's conns
}

type simBackend struct {
	id        string
	alive     bool
	load      int64 // true connections
	conns     []int // open connection IDs
	published int64
	lastPub   float64
	nextPub   float64
}

// balancerBackend is one balancer's knowledge of one backend.
type balancerBackend struct {
	reported, baseline, own int64
	down                    bool // a dial failed: it left and this balancer has not heard yet
}

type simBalancer struct {
	members []int // backends it knows, in its own (shuffled) order
	ring    *Ring
	cands   []Candidate
	view    []*balancerBackend // by backend, including those it does not know
	scale   float64            // viewScaled's estimate of all traffic over its own
}

type simEvent struct {
	at         float64
	kind       int
	a, b, c, d int64
}

const (
	evClose     = iota // a: connection
	evObserve          // a: balancer, b: backend, c: count, d: the balancer's own count then
	evMember           // a: balancer, b: backend, c: 1 join, 0 leave
	evReconnect        // a: key
)

type eventQueue []simEvent

func (q eventQueue) Len() int           { return len(q) }
func (q eventQueue) Less(i, j int) bool { return q[i].at < q[j].at }
func (q eventQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)        { *q = append(*q, x.(simEvent)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type fleetSim struct {
	p         simParams
	rnd       *rand.Rand
	zipf      *rand.Zipf
	keyNames  []string
	now       float64
	events    eventQueue
	backends  []*simBackend
	balancers []*simBalancer
	conns     []simConn
	total     int64 // true open connections
	alive     int
	mainOf    []int            // each key's main backend among the live ones
	byKey     []map[int]int32  // key → backend → connections
	rings     map[string]*Ring // by member set
	byID      map[string]int   // backend ID → index
	res       simResult
}

func newFleetSim(p simParams) *fleetSim {
	p.opt.OwnBound = p.view == viewDual
	s := &fleetSim{p: p, rnd: rand.New(rand.NewPCG(p.seed, 0xf1ee7)), rings: map[string]*Ring{}, byID: map[string]int{}}
	s.res.params = p
	s.zipf = rand.NewZipf(s.rnd, p.zipfS, 1, uint64(p.keys-1))
	s.keyNames = make([]string, p.keys)
	s.byKey = make([]map[int]int32, p.keys)
	for k := range s.keyNames {
		s.keyNames[k] = fmt.Sprintf("s%d-room-%d", p.seed, k)
		s.byKey[k] = map[int]int32{}
	}
	for range p.backends {
		s.addBackend()
	}
	for range p.balancers {
		b := &simBalancer{}
		for g := range s.backends {
			b.members = append(b.members, g)
			b.view = append(b.view, &balancerBackend{})
		}
		s.balancers = append(s.balancers, b)
		s.rebuild(b)
	}
	s.rebuildTruth()
	return s
}

func (s *fleetSim) addBackend() int {
	g := len(s.backends)
	s.backends = append(s.backends, &simBackend{id: fmt.Sprintf("chat-%d", g), alive: true, nextPub: s.now})
	s.byID[s.backends[g].id] = g
	s.alive++
	return g
}

// rebuild gives balancer b a ring of the members it knows, in its own order:
// the mapping must not depend on it.
//
// Balancers that know the same members share one ring (built in the order of
// the first of them), as building one per balancer would be most of the
// simulation's time.
func (s *fleetSim) rebuild(b *simBalancer) {
	s.rnd.Shuffle(len(b.members), func(i, j int) { b.members[i], b.members[j] = b.members[j], b.members[i] })
	set := slices.Sorted(slices.Values(b.members))
	key := fmt.Sprint(set)
	r, ok := s.rings[key]
	if !ok {
		ids := make([]string, len(b.members))
		for i, g := range b.members {
			ids[i] = s.backends[g].id
		}
		r = ringOf(ids)
		s.rings[key] = r
	}
	b.ring = r
	b.cands = make([]Candidate, r.Len())
	for i := range b.cands {
		b.cands[i].ID = r.ID(i)
		b.members[i] = s.byID[r.ID(i)]
	}
}

// rebuildTruth works out each key's main backend among the live ones.
func (s *fleetSim) rebuildTruth() {
	var live []int
	var ids []string
	for g, be := range s.backends {
		if be.alive {
			live = append(live, g)
			ids = append(ids, be.id)
		}
	}
	truth := ringOf(ids)
	s.mainOf = make([]int, len(s.keyNames))
	for k, name := range s.keyNames {
		s.mainOf[k] = live[truth.Owner(name)]
	}
}

func ringOf(ids []string) *Ring {
	r, err := NewRing(ids)
	if err != nil {
		panic(err)
	}
	return r
}

// trueBound is the bound of a new connection over the true loads of the live
// backends.
func (s *fleetSim) trueBound() int64 {
	return ceilFloor(s.p.opt.factor()*float64(s.total+1)/float64(s.alive), s.p.opt.MinBound)
}

// load is what balancer b believes backend g holds.
func (s *fleetSim) load(b *simBalancer, g int) int64 {
	v := b.view[g]
	switch s.p.view {
	case viewExact:
		return s.backends[g].load
	case viewOwn:
		return v.own
	case viewScaled:
		return ScaledLoad(v.reported, v.own, v.baseline, b.scale)
	}
	return max(0, v.reported+v.own-v.baseline)
}

// estimateScale sets b.scale, its TrafficShare.
func (s *fleetSim) estimateScale(b *simBalancer) {
	var reported, own int64
	for _, m := range b.members {
		reported += b.view[m].reported
		own += b.view[m].own
	}
	b.scale = TrafficShare(reported, own)
}

// open places a new connection of key through balancer bi.
func (s *fleetSim) open(bi, key int, warm bool) {
	b := s.balancers[bi]
	var g int
	if s.p.view == viewScaled {
		s.estimateScale(b)
	}
	for {
		for i, m := range b.members {
			b.cands[i].Load = s.load(b, m)
			b.cands[i].Eligible = !b.view[m].down
			b.cands[i].Own = b.view[m].own
		}
		c, ok := b.ring.Pick(s.keyNames[key], b.cands, s.p.opt)
		if !ok {
			return // every backend it knows is gone: the connection fails
		}
		g = b.members[c.Index]
		if s.backends[g].alive {
			break
		}
		// The dial fails; the balancer marks the backend down, as
		// internal/balancer's passive health check does, and tries again.
		b.view[g].down = true
		s.res.failedDials++
	}
	be := s.backends[g]
	if !warm {
		bound := s.trueBound()
		s.res.placements++
		if be.load+1 > bound {
			s.res.overBound++
			s.res.maxExcess = max(s.res.maxExcess, be.load+1-bound)
			s.res.sumExcess += be.load + 1 - bound
		}
		s.res.maxOverRatio = max(s.res.maxOverRatio, float64(be.load+1)/float64(bound))
		if g == s.mainOf[key] {
			s.res.onMain++
		}
	}
	id := len(s.conns)
	s.conns = append(s.conns, simConn{key: key, backend: g, balancer: bi, open: true, slot: len(be.conns)})
	be.conns = append(be.conns, id)
	be.load++
	s.total++
	b.view[g].own++
	s.byKey[key][g]++
	s.schedule(simEvent{at: s.now + s.rnd.ExpFloat64()*s.p.lifetime, kind: evClose, a: int64(id)})
}

func (s *fleetSim) close(id int) {
	c := &s.conns[id]
	if !c.open {
		return
	}
	c.open = false
	be := s.backends[c.backend]
	last := be.conns[len(be.conns)-1]
	be.conns[c.slot] = last
	s.conns[last].slot = c.slot
	be.conns = be.conns[:len(be.conns)-1]
	be.load--
	s.total--
	s.balancers[c.balancer].view[c.backend].own--
	if s.byKey[c.key][c.backend]--; s.byKey[c.key][c.backend] == 0 {
		delete(s.byKey[c.key], c.backend)
	}
}

func (s *fleetSim) schedule(e simEvent) { heap.Push(&s.events, e) }

// balancerFor is the balancer a connection of key arrives at: any, or with
// probability keyBalancer the key's own (clients of one room sharing a
// region, or an L4 balancer hashing their addresses).
func (s *fleetSim) balancerFor(key int) int {
	if s.p.keyBalancer > 0 && s.rnd.Float64() < s.p.keyBalancer {
		return key % len(s.balancers)
	}
	return s.rnd.IntN(len(s.balancers))
}

// report runs each live backend's reporter: publish when the count moved by
// more than the threshold (and the minimum step), reached or left 0, or
// differs at all after the refresh time, at most once per interval.
func (s *fleetSim) report() {
	for g, be := range s.backends {
		if !be.alive || s.now < be.nextPub {
			continue
		}
		diff := be.load - be.published
		if diff < 0 {
			diff = -diff
		}
		significant := float64(diff) > s.p.threshold*float64(be.published) && diff >= s.p.minStep
		zero := (be.load == 0) != (be.published == 0)
		stale := diff > 0 && s.now-be.lastPub >= s.p.refresh
		if !significant && !zero && !stale {
			continue
		}
		be.published, be.lastPub = be.load, s.now
		be.nextPub = s.now + s.p.publishMin*(1+0.4*s.rnd.Float64())
		for bi, b := range s.balancers {
			s.schedule(simEvent{at: s.now + s.rnd.Float64()*s.p.watchMax, kind: evObserve, a: int64(bi), b: int64(g), c: be.load, d: b.view[g].own})
		}
	}
}

// churn takes a backend away (its clients reconnect) or adds a new one; each
// balancer hears of it within the watch delay.
func (s *fleetSim) churn(join bool) {
	before := s.mainOf
	var g int
	if join {
		g = s.addBackend()
		for _, b := range s.balancers {
			b.view = append(b.view, &balancerBackend{})
		}
	} else {
		var live []int
		for g, be := range s.backends {
			if be.alive {
				live = append(live, g)
			}
		}
		g = live[s.rnd.IntN(len(live))]
		be := s.backends[g]
		be.alive = false
		s.alive--
		for _, id := range slices.Clone(be.conns) {
			key := s.conns[id].key
			s.close(id)
			s.schedule(simEvent{at: s.now + s.rnd.Float64()*s.p.reconnect, kind: evReconnect, a: int64(key)})
		}
	}
	s.rebuildTruth()
	moved := 0
	for k := range s.keyNames {
		if before[k] != s.mainOf[k] {
			moved++
		}
	}
	share := float64(moved) / float64(len(s.keyNames))
	if join {
		s.res.joins++
		s.res.movedOnJoin += share
	} else {
		s.res.leaves++
		s.res.movedOnLeave += share
	}
	joined := int64(0)
	if join {
		joined = 1
	}
	for bi := range s.balancers {
		s.schedule(simEvent{at: s.now + s.rnd.Float64()*s.p.watchMax, kind: evMember, a: int64(bi), b: int64(g), c: joined})
	}
}

func (s *fleetSim) handle(e simEvent) {
	switch e.kind {
	case evClose:
		s.close(int(e.a))
	case evReconnect:
		s.open(s.balancerFor(int(e.a)), int(e.a), false)
	case evObserve:
		b, g := s.balancers[e.a], int(e.b)
		if slices.Contains(b.members, g) {
			// The baseline is this balancer's own count when the backend
			// took its count (the report's ws_counted_at), so what it
			// opened while the report travelled counts once.
			v := b.view[g]
			v.reported, v.baseline = e.c, e.d
		}
	case evMember:
		b, g := s.balancers[e.a], int(e.b)
		if e.c == 1 {
			b.members = append(b.members, g)
			v := b.view[g]
			v.reported, v.baseline = 0, v.own // it registers with 0 connections
		} else {
			b.members = slices.DeleteFunc(b.members, func(m int) bool { return m == g })
		}
		s.rebuild(b)
	}
}

func (s *fleetSim) sample() {
	avg := float64(s.total) / float64(s.alive)
	top := int64(0)
	for _, be := range s.backends {
		if be.alive {
			top = max(top, be.load)
		}
	}
	s.res.samples++
	s.res.sumMaxOverAvg += float64(top) / avg
	s.res.maxOverAvg = max(s.res.maxOverAvg, float64(top)/avg)
	onMain, multi, together := 0, 0, 0
	for k, backends := range s.byKey {
		n := int32(0)
		for _, c := range backends {
			n += c
		}
		onMain += int(backends[s.mainOf[k]])
		if n >= 2 {
			multi++
			if len(backends) == 1 {
				together++
			}
		}
	}
	s.res.sumMainShare += float64(onMain) / float64(s.total)
	if multi > 0 {
		s.res.sumTogether += float64(together) / float64(multi)
	}
}

// run warms the fleet up to its mean load with true reports everywhere, then
// simulates: arrivals (Poisson), closes, reports in 100 ms ticks, churn.
func (s *fleetSim) run() simResult {
	p := s.p
	for range p.conns {
		key := int(s.zipf.Uint64())
		s.open(s.balancerFor(key), key, true)
	}
	for g, be := range s.backends {
		be.published, be.lastPub = be.load, 0
		be.nextPub = p.publishMin * s.rnd.Float64()
		for _, b := range s.balancers {
			v := b.view[g]
			v.reported, v.baseline = be.load, v.own
		}
	}
	rate := float64(p.conns) / p.lifetime
	const tick = 0.1
	nextArrival := s.rnd.ExpFloat64() / rate
	nextChurn, nextSample := p.churnEvery, p.sampleEvery
	join := false
	for t := 0.0; t < p.duration; t += tick {
		end := t + tick
		// Events and arrivals in time order within the tick.
		for {
			nextEvent := math.Inf(1)
			if len(s.events) > 0 {
				nextEvent = s.events[0].at
			}
			if nextEvent >= end && nextArrival >= end {
				break
			}
			if nextEvent <= nextArrival {
				e := heap.Pop(&s.events).(simEvent)
				s.now = e.at
				s.handle(e)
				continue
			}
			s.now = nextArrival
			key := int(s.zipf.Uint64())
			s.open(s.balancerFor(key), key, false)
			nextArrival += s.rnd.ExpFloat64() / rate
		}
		s.now = end
		s.report()
		if p.churnEvery > 0 && s.now >= nextChurn {
			s.churn(join)
			join = !join
			nextChurn += p.churnEvery
		}
		if s.now >= nextSample {
			s.sample()
			nextSample += p.sampleEvery
		}
	}
	return s.res
}

// Shares and means of a result, for the tables.
func (r simResult) overShare() float64 { return float64(r.overBound) / float64(r.placements) }
func (r simResult) meanExcess() float64 {
	if r.overBound == 0 {
		return 0
	}
	return float64(r.sumExcess) / float64(r.overBound)
}
func (r simResult) mainShare() float64      { return float64(r.onMain) / float64(r.placements) }
func (r simResult) liveMainShare() float64  { return r.sumMainShare / float64(r.samples) }
func (r simResult) togetherShare() float64  { return r.sumTogether / float64(r.samples) }
func (r simResult) meanMaxOverAvg() float64 { return r.sumMaxOverAvg / float64(r.samples) }
func (r simResult) leaveMoves() float64     { return r.movedOnLeave / float64(r.leaves) }
func (r simResult) joinMoves() float64      { return r.movedOnJoin / float64(r.joins) }
