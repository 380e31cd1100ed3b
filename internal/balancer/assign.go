package balancer

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// DefaultAssignHold bounds the default hold of an assignment: see
// AssignOptions.Hold.
const DefaultAssignHold = 5 * time.Second

// DefaultReportLag is the default of AssignOptions.ReportLag.
const DefaultReportLag = time.Second

// NoAssignHold, as AssignOptions.Hold, turns local accounting off: the
// Assigner then sees only the backends' reports, as a naive "pick the
// least reported" balancer would. A burst then goes to whichever backend
// looked least loaded in the last report. For comparisons and tests only.
const NoAssignHold time.Duration = -1

// AssignOptions configure an Assigner. Signer is required; the zero value
// of every other field is a usable default.
type AssignOptions struct {
	// Signer makes the tokens. Required. To rotate keys, build a new
	// Assigner (Backends are shared through the BackendStore, so recent
	// assignments carry over).
	Signer *token.Signer

	// TTL is the tokens' lifetime. Zero means token.DefaultTTL.
	TTL time.Duration

	// Hold is how long at most each assignment counts against its
	// backend's load on top of the load the backend last reported. Reports
	// are seconds old and may have been taken before the client connected,
	// so without this every request of a burst would go to the backend that
	// looked least loaded. An assignment stops counting earlier when a
	// report comes in ReportLag or more after it. Zero means min(TTL,
	// DefaultAssignHold); at most MaxAssignHold; NoAssignHold turns local
	// accounting off.
	Hold time.Duration

	// ReportLag is how long after an assignment the backend's reports may
	// still miss its connection: the client's time to connect plus the
	// report's way through discovery. Too short, and bursts lean toward
	// backends that reported last; too long, and assignments already
	// reported count twice meanwhile. Zero means DefaultReportLag; negative
	// means reports never end a hold early.
	ReportLag time.Duration

	// Select picks a backend among the available ones, skipping those skip
	// reports. Nil means LeastLoaded: with every assignment counted at once,
	// it spreads one balancer's assignments evenly even while reports lag,
	// and ties are broken at random, so several balancers with the same
	// view do not converge on one backend. TwoChoices spreads better when
	// several balancers act on lagging reports through a long burst, and
	// fills a new backend more slowly.
	Select func(ups []*Upstream, now time.Time, skip func(*Upstream) bool) *Upstream

	// QueryParam names the query parameter that carries the token in the
	// URL. Empty means token.DefaultQueryParam, which token.Middleware
	// reads.
	QueryParam string

	// MaxAttempts bounds the backends tried when the chosen one turns out
	// full (filled by a concurrent assignment). Default 3.
	MaxAttempts int

	// RetryAfter is sent with 503 answers. Default 5s.
	RetryAfter time.Duration

	// OnOutcome, if set, is told the outcome of every assignment (OutcomeOK,
	// OutcomeUnavailable or OutcomeFailed) with the backend's ID where one
	// was chosen, for metrics.
	OnOutcome func(backend, outcome string)

	// Logger gets warnings about backends whose URL cannot be used.
	// Default: none.
	Logger *zap.Logger

	// Now is the clock for health marks; default time.Now. Token times come
	// from the Signer's clock.
	Now func() time.Time

	// Affinity, if set, places assignments by a key per request on a
	// bounded-load hash ring, and sets the sticky cookie on the answer
	// (see AffinityOptions and AssignRequest). Nil: Select.
	Affinity *AffinityOptions
}

// Assigner is the core of assign mode: it picks the least-loaded backend
// for a client and hands back that backend's public WebSocket URL with a
// token for it, so that the client connects to the backend directly.
//
// The target URL is always the registered URL of one of the source's
// backends (Upstream.PublicURL, else its URL), with the token added to the
// query: nothing from the client's request reaches it, so /assign cannot be
// turned into an open redirect.
//
// Assigner is safe for concurrent use.
type Assigner struct {
	src      UpstreamSource
	opts     AssignOptions
	chooser  chooser
	share    *shareEstimator
	affinity *affinityPicker // nil without affinity
}

// Assignment is a backend chosen for a client: the /assign answer of the
// wire contract (it marshals as protocol.Assignment), plus what the handler
// sets on the HTTP answer.
type Assignment struct {
	protocol.Assignment
	// Cookie, if not nil, is the sticky cookie to set on the answer
	// (AffinityOptions.CookieName).
	Cookie *http.Cookie `json:"-"`
}

// NewAssigner returns an Assigner choosing among src's upstreams.
func NewAssigner(src UpstreamSource, opts AssignOptions) (*Assigner, error) {
	if opts.Signer == nil {
		return nil, errors.New("new assigner: a Signer is required")
	}
	if opts.TTL < 0 {
		return nil, fmt.Errorf("new assigner: negative TTL %s", opts.TTL)
	}
	if opts.TTL == 0 {
		opts.TTL = token.DefaultTTL
	}
	switch {
	case opts.Hold == 0:
		opts.Hold = min(opts.TTL, DefaultAssignHold)
	case opts.Hold < 0:
		opts.Hold = NoAssignHold
	case opts.Hold > MaxAssignHold:
		return nil, fmt.Errorf("new assigner: hold %s is longer than %s", opts.Hold, MaxAssignHold)
	}
	switch {
	case opts.ReportLag == 0:
		opts.ReportLag = DefaultReportLag
	case opts.ReportLag < 0:
		opts.ReportLag = MaxAssignHold
	}
	if opts.Select == nil {
		opts.Select = LeastLoaded
	}
	if opts.QueryParam == "" {
		opts.QueryParam = token.DefaultQueryParam
	}
	chooser := newChooser(opts.Select, &opts.MaxAttempts, &opts.RetryAfter)
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Assigner{src: src, opts: opts, chooser: chooser, share: newAssignShare(),
		affinity: newAffinityPicker(opts.Affinity, opts.Select, opts.Logger)}, nil
}

// Hold is how long an assignment counts against its backend's load, or
// NoAssignHold.
func (a *Assigner) Hold() time.Duration { return a.opts.Hold }

// TTL is the lifetime of the tokens.
func (a *Assigner) TTL() time.Duration { return a.opts.TTL }

// Assign picks a backend for a client identified by subject (may be empty:
// the token then names no one) and returns its URL and token. The
// assignment counts against the backend's load at once, for the hold. When
// every backend is full, down or draining it returns an *Error with status
// 503 and a Retry-After header; when no token can be made, one with 500.
func (a *Assigner) Assign(subject string) (*Assignment, error) {
	return a.AssignRequest(nil, subject)
}

// AssignRequest is Assign for request r, whose key and sticky cookie
// affinity reads (AssignOptions.Affinity); r may be nil. The Assignment's
// Cookie is then the cookie to set on the answer.
func (a *Assigner) AssignRequest(r *http.Request, subject string) (*Assignment, error) {
	ups := a.src.Upstreams()
	now := a.opts.Now()
	if a.opts.Hold != NoAssignHold {
		a.share.observe(ups)
	}
	var asg *Assignment
	var release func()
	reserve := func(u *Upstream) (ok bool) {
		release, ok = a.reserve(u)
		return ok
	}
	var pick pickFunc
	var sel *affinitySel
	if a.affinity != nil {
		sel = a.affinity.begin(r)
		pick = sel.pick
	}
	_, done, lastErr, _ := a.chooser.choose(ups, now, pick, reserve, func(u *Upstream) (_, next error) {
		var err error
		if asg, err = a.issue(u, subject); err != nil {
			release()
			a.opts.Logger.Warn("cannot assign to backend", zap.String("backend", u.ID), zap.Error(err))
			return nil, err
		}
		if sel != nil {
			asg.Cookie = sel.chosen(u)
		}
		return nil, nil
	})
	switch {
	case done:
		a.outcome(asg.Backend, OutcomeOK)
		return asg, nil
	case lastErr != nil:
		a.outcome("", OutcomeFailed)
		return nil, &Error{Status: http.StatusInternalServerError, Err: fmt.Errorf("assigning a backend: %w", lastErr)}
	}
	a.outcome("", OutcomeUnavailable)
	return nil, a.chooser.unavailable(ups)
}

// reserve counts an assignment against u for the hold, unless that would
// pass u's limit. release takes it back.
func (a *Assigner) reserve(u *Upstream) (release func(), ok bool) {
	if a.opts.Hold == NoAssignHold {
		return func() {}, !u.Full()
	}
	t := u.assigned.add(a.opts.Hold, a.opts.ReportLag)
	if limit := u.Limit(); limit > 0 && u.Load() > limit {
		u.assigned.remove(t)
		return nil, false
	}
	return func() { u.assigned.remove(t) }, true
}

// issue makes the token and URL of an assignment to u.
func (a *Assigner) issue(u *Upstream, subject string) (*Assignment, error) {
	target, err := publicURL(u)
	if err != nil {
		return nil, err
	}
	tok, claims, err := a.opts.Signer.Issue(u.ID, subject, a.opts.TTL)
	if err != nil {
		return nil, fmt.Errorf("issuing token for backend %s: %w", u.ID, err)
	}
	target.RawQuery = withQueryParam(target.RawQuery, a.opts.QueryParam, tok)
	return &Assignment{Assignment: protocol.Assignment{
		URL:       target.String(),
		Token:     tok,
		ExpiresAt: time.Unix(claims.ExpiresAt, 0).UTC(),
		Backend:   u.ID,
	}}, nil
}

// publicURL is where clients of u connect: its PublicURL, else the URL the
// balancer knows it by, without fragment. It must be an absolute ws:// or
// wss:// URL without user info.
func publicURL(u *Upstream) (*url.URL, error) {
	var t url.URL
	switch {
	case u.PublicURL != "":
		p, err := url.Parse(u.PublicURL)
		if err != nil {
			return nil, fmt.Errorf("parsing public URL of backend %s: %w", u.ID, err)
		}
		t = *p
	case u.URL != nil:
		t = *u.URL
		// The dial address always has a port; a URL for clients does not
		// need the default one.
		if p := t.Port(); (t.Scheme == "ws" && p == "80") || (t.Scheme == "wss" && p == "443") {
			t.Host = strings.TrimSuffix(t.Host, ":"+p)
		}
	default:
		return nil, fmt.Errorf("backend %s has no URL", u.ID)
	}
	if (t.Scheme != "ws" && t.Scheme != "wss") || t.Host == "" || t.User != nil || t.Opaque != "" {
		return nil, fmt.Errorf("public URL of backend %s is not an absolute ws:// or wss:// URL without user info", u.ID)
	}
	if t.Path == "" {
		t.Path, t.RawPath = "/", ""
	}
	t.Fragment, t.RawFragment = "", ""
	return &t, nil
}

// withQueryParam returns rawQuery with every existing name parameter
// removed and name=value added, keeping the other parameters as written.
func withQueryParam(rawQuery, name, value string) string {
	var b strings.Builder
	for p := range strings.SplitSeq(rawQuery, "&") {
		if p == "" {
			continue
		}
		n, _, _ := strings.Cut(p, "=")
		if un, err := url.QueryUnescape(n); err == nil && un == name {
			continue
		}
		b.WriteString(p)
		b.WriteByte('&')
	}
	b.WriteString(url.QueryEscape(name))
	b.WriteByte('=')
	b.WriteString(url.QueryEscape(value))
	return b.String()
}

func (a *Assigner) outcome(backend, outcome string) {
	if a.opts.OnOutcome != nil {
		a.opts.OnOutcome(backend, outcome)
	}
}
