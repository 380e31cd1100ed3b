package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/affinity"
)

// Outcomes of an affinity choice, as passed to AffinityOptions.OnChoice.
const (
	// AffinityMain: the connection went to its key's main backend, the
	// first eligible one on the ring.
	AffinityMain = "main"
	// AffinitySpill: the main backend was at its bound, the connection
	// went further along the ring.
	AffinitySpill = "spill"
	// AffinityCookie: the sticky cookie brought the client back to the
	// backend it names.
	AffinityCookie = "cookie"
)

// AffinityOptions turn on affinity (bounded-load consistent hashing of a
// key per request, docs/affinity.md) and the sticky cookie, in proxy and
// assign mode. A nil *AffinityOptions is plain least connections.
type AffinityOptions struct {
	// Key returns the request's key (a room, a tenant); nil, or an empty
	// key, means least connections for the request.
	Key func(r *http.Request) string
	// BalanceFactor is c of the bound ⌈c · (total + 1) · wᵢ / Σw⌉: must be
	// above 1; 0 means affinity.DefaultBalanceFactor (1.25).
	BalanceFactor float64
	// CookieName, if set, turns on the sticky cookie: the answer that
	// completes a choice sets it, with an opaque value naming the chosen
	// backend; a request carrying a valid one goes back to that backend if
	// it is available and below its bound.
	CookieName string
	// CookieKey is the HMAC key of the cookie values, at least
	// affinity.MinCookieKeyLen bytes; every balancer must share it for a
	// cookie set by one to be honoured by another.
	CookieKey []byte
	// OnChoice, if set, is told of every connection (proxy mode: its 101)
	// or assignment placed by the key or the cookie, with the backend's
	// address and AffinityMain, AffinitySpill or AffinityCookie.
	OnChoice func(backend, outcome string)
}

// Validate reports whether the options are usable.
func (o *AffinityOptions) Validate() error {
	if err := (affinity.Options{BalanceFactor: o.BalanceFactor}).Validate(); err != nil {
		return err
	}
	if o.CookieName != "" {
		if len(o.CookieKey) < affinity.MinCookieKeyLen {
			return fmt.Errorf("affinity cookie key: %d bytes, want at least %d", len(o.CookieKey), affinity.MinCookieKeyLen)
		}
		if !validCookieName(o.CookieName) {
			return fmt.Errorf("affinity cookie name %q: not a valid cookie name", o.CookieName)
		}
	}
	if o.Key == nil && o.CookieName == "" {
		return errors.New("affinity needs a key or a cookie")
	}
	return nil
}

func validCookieName(name string) bool {
	return (&http.Cookie{Name: name, Value: "x"}).Valid() == nil
}

// affinityPicker is the affinity state of one Proxy or Assigner: the ring
// and cookie values of the current upstream list, rebuilt when the list
// changes (never per request).
type affinityPicker struct {
	opts     AffinityOptions
	aopts    affinity.Options
	logger   *zap.Logger
	fallback pickFunc // for requests without key, or cookie to honour

	mu  sync.Mutex // serialises rebuilds
	cur atomic.Pointer[affinityRing]
	// bufs holds candidate and bound slices for selections.
	bufs sync.Pool
}

// affinityRing is the ring and cookie values of one upstream list, and
// that list's identity.
type affinityRing struct {
	first   **Upstream // &ups[0]: Pool.Set publishes a new slice per change
	n       int
	ring    *affinity.Ring
	cookies *affinity.Cookies // nil without the cookie
}

type affinityBufs struct {
	cands  []affinity.Candidate
	bounds []int64
}

// newAffinityPicker returns nil for nil options. Invalid options (which
// callers are to check with Validate) fall back to defaults: an invalid
// factor counts as the default, an unusable cookie is turned off.
func newAffinityPicker(o *AffinityOptions, fallback pickFunc, logger *zap.Logger) *affinityPicker {
	if o == nil {
		return nil
	}
	a := &affinityPicker{opts: *o, aopts: affinity.Options{BalanceFactor: o.BalanceFactor}, logger: logger, fallback: fallback}
	if err := o.Validate(); err != nil && o.CookieName != "" {
		logger.Error("affinity cookie turned off", zap.Error(err))
		a.opts.CookieName = ""
	}
	a.bufs.New = func() any { return new(affinityBufs) }
	return a
}

// ringFor returns the ring of ups, building it on the first call for this
// list; nil when ups is empty or its IDs cannot make a ring.
func (a *affinityPicker) ringFor(ups []*Upstream) *affinityRing {
	if len(ups) == 0 {
		return nil
	}
	if cur := a.cur.Load(); cur != nil && cur.first == &ups[0] && cur.n == len(ups) {
		return cur
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if cur := a.cur.Load(); cur != nil && cur.first == &ups[0] && cur.n == len(ups) {
		return cur
	}
	ids := make([]string, len(ups))
	weights := make([]float64, len(ups))
	weighted := false
	for i, u := range ups {
		ids[i] = u.ID
		// Static weights only: every balancer has them from the start,
		// so every balancer builds the same ring. Reported capacities
		// weight the bound, not the ring (they arrive at different times).
		if u.Weight > 0 {
			weights[i], weighted = float64(u.Weight), true
		}
	}
	var ring *affinity.Ring
	var err error
	if weighted {
		ring, err = affinity.NewWeightedRing(ids, weights)
	} else {
		ring, err = affinity.NewRing(ids)
	}
	if err != nil {
		a.logger.Error("building the affinity ring; choosing by least connections", zap.Error(err))
		return nil
	}
	ar := &affinityRing{first: &ups[0], n: len(ups), ring: ring}
	if a.opts.CookieName != "" {
		if ar.cookies, err = affinity.NewCookies(a.opts.CookieKey, ids); err != nil {
			a.logger.Error("preparing affinity cookies", zap.Error(err))
		}
	}
	a.cur.Store(ar)
	return ar
}

// affinitySel is the affinity selection of one request.
type affinitySel struct {
	a      *affinityPicker
	key    string
	cookie string // the request's cookie value, "" without
	secure bool

	// the last choice
	ring    *affinityRing
	index   int
	outcome string // "" for least connections
}

// begin prepares the selection of request r (nil: no key, no cookie).
func (a *affinityPicker) begin(r *http.Request) *affinitySel {
	s := &affinitySel{a: a, index: -1}
	if r == nil {
		return s
	}
	if a.opts.Key != nil {
		s.key = a.opts.Key(r)
	}
	if a.opts.CookieName != "" {
		if c, err := r.Cookie(a.opts.CookieName); err == nil {
			s.cookie = c.Value
		}
		s.secure = r.TLS != nil
	}
	return s
}

// pick is a pickFunc: the cookie's backend if it names one that is
// available and below its bound, else the key's backend on the ring, else
// (no key) the least loaded. A retry picks again with the failed backend
// skipped, which walks on along the ring.
func (s *affinitySel) pick(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	s.ring, s.index, s.outcome = nil, -1, ""
	if s.key == "" && s.cookie == "" {
		return s.leastLoaded(ups, now, skip)
	}
	ar := s.a.ringFor(ups)
	if ar == nil {
		return s.leastLoaded(ups, now, skip)
	}
	bufs := s.a.bufs.Get().(*affinityBufs)
	defer s.a.bufs.Put(bufs)
	cands := fillCandidates(bufs, ups, now, skip)
	for i := range cands {
		if cands[i].ID != ar.ring.ID(i) {
			// Not the list the ring was built for (a reused slice):
			// never let Pick see misaligned candidates.
			return s.leastLoaded(ups, now, skip)
		}
	}
	s.ring = ar
	if s.cookie != "" && ar.cookies != nil {
		if i, ok := ar.cookies.Match(s.cookie); ok && cands[i].Eligible {
			bufs.bounds = affinity.Bounds(cands, s.a.aopts, bufs.bounds)
			if cands[i].Load < bufs.bounds[i] {
				s.index, s.outcome = i, AffinityCookie
				return ups[i]
			}
		}
	}
	if s.key == "" {
		return s.leastLoaded(ups, now, skip)
	}
	ch, ok := ar.ring.Pick(s.key, cands, s.a.aopts)
	if !ok {
		return nil
	}
	s.index, s.outcome = ch.Index, AffinitySpill
	if ch.Main {
		s.outcome = AffinityMain
	}
	return ups[ch.Index]
}

// leastLoaded picks as without affinity (the fallback policy), remembering the choice for the
// cookie.
func (s *affinitySel) leastLoaded(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream {
	u := s.a.fallback(ups, now, skip)
	if u == nil || s.a.opts.CookieName == "" {
		return u
	}
	if ar := s.a.ringFor(ups); ar != nil {
		for i, x := range ups {
			if x == u {
				s.ring, s.index = ar, i
				break
			}
		}
	}
	return u
}

// fillCandidates describes ups for internal/affinity, in their order.
func fillCandidates(bufs *affinityBufs, ups []*Upstream, now time.Time, skip func(*Upstream) bool) []affinity.Candidate {
	if cap(bufs.cands) < len(ups) {
		bufs.cands = make([]affinity.Candidate, len(ups))
	}
	cands := bufs.cands[:len(ups)]
	for i, u := range ups {
		load, ok := u.availableLoad(now)
		if ok && skip != nil && skip(u) {
			ok = false
		}
		cands[i] = affinity.Candidate{ID: u.ID, Load: load, Weight: float64(u.weight()), Eligible: ok}
	}
	return cands
}

// chosen completes a successful choice of u: it reports the outcome and
// returns the cookie to set, or nil.
func (s *affinitySel) chosen(u *Upstream) *http.Cookie {
	if s.outcome != "" && s.a.opts.OnChoice != nil {
		s.a.opts.OnChoice(u.Addr(), s.outcome)
	}
	if s.ring == nil || s.ring.cookies == nil || s.index < 0 {
		return nil
	}
	v := s.ring.cookies.Value(s.index)
	if v == s.cookie {
		return nil // the client has it already
	}
	return &http.Cookie{
		Name:     s.a.opts.CookieName,
		Value:    v,
		Path:     "/",
		HttpOnly: true,
		Secure:   s.secure,
		SameSite: http.SameSiteLaxMode,
	}
}

// AffinityBounds returns each upstream's affinity bound under balance
// factor c (0: the default), for the admin API and status page: the load at
// which a key's connections stop going to it. Unavailable upstreams get 0.
func AffinityBounds(ups []*Upstream, now time.Time, c float64) []int64 {
	var bufs affinityBufs
	cands := fillCandidates(&bufs, ups, now, nil)
	return affinity.Bounds(cands, affinity.Options{BalanceFactor: c}, nil)
}
