package balancer

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Outcomes of an upgrade, as passed to ProxyOptions.OnOutcome.
const (
	OutcomeOK          = "ok"          // relaying
	OutcomeRejected    = "rejected"    // the backend answered non-101; passed to the client
	OutcomeBadRequest  = "bad_request" // the client's handshake was malformed
	OutcomeUnavailable = "unavailable" // every backend full, down or draining
	OutcomeFailed      = "failed"      // every attempt failed to dial or handshake
	OutcomeRetried     = "retried"     // one backend failed; another is tried
)

// Dialer opens connections to backends; *net.Dialer is one.
type Dialer interface {
	DialContext(ctx context.Context, network, address string) (net.Conn, error)
}

// ProxyOptions configures a Proxy. The zero value of every field is a usable
// default.
type ProxyOptions struct {
	// Dialer opens backend connections. Default: a net.Dialer with
	// DialTimeout and TCP keep-alives.
	Dialer Dialer
	// DialTimeout bounds one dial attempt. Default 5s.
	DialTimeout time.Duration
	// HandshakeTimeout bounds the upstream handshake after the dial, TLS
	// included. Default 10s.
	HandshakeTimeout time.Duration
	// TLSConfig is used for wss backends; ServerName defaults to the host.
	// It is not modified; a copy per host name is made once (see
	// tlsConfigs).
	TLSConfig *tls.Config
	// UpstreamHeaders, if set, edits the headers of every upgrade request
	// sent to a backend (header_up): its own copy of the client's
	// end-to-end headers, X-Forwarded-* and Host (deleting Host sends the
	// backend's host:port). Hop-by-hop headers it adds are not sent: the
	// proxy writes Connection and Upgrade itself. Nil keeps the handshake
	// free of the copy.
	UpstreamHeaders HeaderEditor
	// DownstreamHeaders, if set, edits the headers of a backend's answer
	// (header_down), hop-by-hop headers already removed, before the client
	// gets it: the 101 (or, for an extended CONNECT, the 200 made of it)
	// and a refusal passed on.
	DownstreamHeaders ResponseEditor
	// FailDuration is how long a backend that failed a dial or handshake is
	// kept from new connections. Default 10s.
	FailDuration time.Duration
	// MaxAttempts bounds the backends tried for one upgrade. Default 3.
	MaxAttempts int
	// RetryAfter is sent with 503 answers. Default 5s.
	RetryAfter time.Duration
	// Logger gets structured logs. Default: none.
	Logger *zap.Logger
	// OnOutcome, if set, is told the outcome of every upgrade, with the
	// backend's address where one was involved (for metrics).
	OnOutcome func(backend, outcome string)
	// Now is the clock; default time.Now.
	Now func() time.Time
	// Affinity, if set, places connections by a key per request on a
	// bounded-load hash ring, and sets the sticky cookie (see
	// AffinityOptions). Nil: least connections.
	Affinity *AffinityOptions
}

// Proxy balances WebSocket upgrades over the upstreams of a source and relays
// the connections it opens.
type Proxy struct {
	src        UpstreamSource
	store      BackendStore
	opts       ProxyOptions
	tlsConfigs tlsConfigs
	chooser    chooser
	share      *shareEstimator
	affinity   *affinityPicker // nil without affinity
}

// NewProxy returns a Proxy choosing among src's upstreams. Each relayed
// connection holds a reference to its backend in store until it closes, so
// that counts stay right after the Proxy itself is discarded (a config
// reload).
func NewProxy(src UpstreamSource, store BackendStore, opts *ProxyOptions) *Proxy {
	p := &Proxy{src: src, store: store, share: newLiveShare()}
	if opts != nil {
		p.opts = *opts
	}
	o := &p.opts
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.Dialer == nil {
		o.Dialer = &net.Dialer{Timeout: o.DialTimeout, KeepAlive: 30 * time.Second}
	}
	if o.FailDuration <= 0 {
		o.FailDuration = 10 * time.Second
	}
	p.chooser = newChooser(LeastLoaded, &o.MaxAttempts, &o.RetryAfter)
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if err := eventLoopErr(); err != nil {
		// Connections still work, two goroutines each, but at several
		// times the memory the event loop needs: whoever sized the
		// machine for the event loop must hear of it.
		o.Logger.Warn("event loop unavailable; relaying every connection with two goroutines", zap.Error(err))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	p.affinity = newAffinityPicker(o.Affinity, LeastLoaded, o.Logger)
	return p
}

// ServeUpgrade proxies one WebSocket upgrade request: it picks the least
// loaded backend, completes the handshake through it (trying others if it
// cannot be reached) and, on 101, hands both connections to a relay and
// returns. A non-101 answer from the backend is passed to the client as is.
// Any failure before that is returned as *Error; nothing has been written
// to w then.
//
// An extended CONNECT (IsExtendedConnect: a WebSocket over an HTTP/2 or
// HTTP/3 stream) goes to the backend as an HTTP/1.1 upgrade; the client
// gets 200 with the backend's choices, and ServeUpgrade returns only when
// the relay has ended, the stream living as long as its handler.
//
// hook, if not nil, is adopted by the relay that takes the connection and
// told when it ends (see RelayHook); if no relay takes it, hook.Adopted is
// false when ServeUpgrade returns.
//
// It reads in the order an upgrade goes: admit (transport.go), choose
// (choose.go), dial and handshake (handshake.go), then pass a refusal on or
// hand over to the relay through the client's transport (transport_*.go).
func (p *Proxy) ServeUpgrade(w http.ResponseWriter, r *http.Request, fwd ForwardedFor, hook *RelayHook) error {
	t, e := p.admit(r)
	if e != nil {
		p.outcome("", OutcomeBadRequest)
		return e
	}
	ups := p.src.Upstreams()
	p.share.observe(ups)
	var pick pickFunc
	var sel *affinitySel
	if p.affinity != nil {
		sel = p.affinity.begin(r)
		pick = sel.pick
	}
	result, done, lastErr, chosen := p.chooser.choose(ups, p.opts.Now(), pick, (*Upstream).reserve, func(u *Upstream) (result, next error) {
		backend, resp, br, err := p.handshake(r.Context(), u, t.upstreamRequest(), fwd)
		if err != nil {
			return p.handshakeFailed(r.Context(), u, err)
		}
		u.MarkUp()
		p.editAnswer(r, u, resp, sel)
		if resp.StatusCode != http.StatusSwitchingProtocols {
			u.unreserve()
			p.outcome(u.Addr(), OutcomeRejected)
			return p.passResponse(w, backend, resp, br), nil
		}
		return p.handOver(t, w, u, backend, resp, br, hook), nil
	})
	switch {
	case done:
		return result
	case lastErr != nil:
		p.outcome("", OutcomeFailed)
		return &Error{Status: http.StatusBadGateway, Err: fmt.Errorf("no backend completed the handshake after %d attempts: %w", chosen, lastErr)}
	}
	p.outcome("", OutcomeUnavailable)
	return p.chooser.unavailable(ups)
}

// reserve counts a connection against the backend from the moment it is
// chosen, not from the 101: a burst of concurrent upgrades then spreads
// instead of all seeing the same least-loaded backend. It fails if that
// would pass the backend's limit.
func (u *Upstream) reserve() bool {
	u.addLive(1)
	if limit := u.Limit(); limit > 0 && u.Load() > limit {
		u.addLive(-1)
		return false
	}
	return true
}

func (u *Upstream) unreserve() { u.addLive(-1) }

// handshakeFailed gives up backend u after a failed dial or handshake. A
// client that went away meanwhile ends the upgrade; otherwise u is kept from
// new connections for FailDuration and the next backend is tried.
func (p *Proxy) handshakeFailed(ctx context.Context, u *Upstream, err error) (result, next error) {
	u.unreserve()
	if ctx.Err() != nil {
		return &Error{Status: 499, Err: fmt.Errorf("client went away during the upstream handshake: %w", err)}, nil
	}
	u.MarkDown(p.opts.Now(), p.opts.FailDuration)
	p.opts.Logger.Warn("backend failed; marked down",
		zap.String("backend", u.Addr()),
		zap.Duration("fail_duration", p.opts.FailDuration),
		zap.Error(err))
	p.outcome(u.Addr(), OutcomeRetried)
	return nil, err
}

// editAnswer edits backend u's answer to r before the client gets it:
// header_down, and on 101 the affinity cookie naming u.
func (p *Proxy) editAnswer(r *http.Request, u *Upstream, resp *http.Response, sel *affinitySel) {
	if p.opts.DownstreamHeaders != nil {
		editResponse(r, u, resp, p.opts.DownstreamHeaders)
	}
	if sel != nil && resp.StatusCode == http.StatusSwitchingProtocols {
		if c := sel.chosen(u); c != nil {
			resp.Header.Add("Set-Cookie", c.String())
		}
	}
}

// handOver answers the client through its transport with the backend's 101
// and hands both connections to a relay. It returns when t.wait does: at
// once for a hijacked connection.
func (p *Proxy) handOver(t clientTransport, w http.ResponseWriter, u *Upstream, backend net.Conn, resp *http.Response, br *bufio.Reader, hook *RelayHook) error {
	client, result := t.open(w, u, resp)
	if client == nil {
		p.dropBackend(u, backend, br)
		return result
	}
	hook.adopt()

	b := u.Backend
	rl := p.newRelay(b, hook, t.ended())
	if err := t.greet(rl, client, backend, resp, br); err != nil {
		p.abandonRelay(b, client, backend, hook)
		return nil
	}
	p.outcome(b.Addr(), OutcomeOK)
	if c := p.opts.Logger.Check(zapcore.DebugLevel, "websocket relaying"); c != nil {
		c.Write(zap.String("backend", b.Addr()), zap.String("remote", client.RemoteAddr().String()))
	}
	rl.start(client, backend)
	// Tracked once started, so that nothing can close it half set up; a
	// relay that ended already is not tracked (see track).
	b.track(rl)
	t.wait()
	return nil
}

// newRelay counts a relayed connection to b from now until the relay
// finishes, when it also ends hook and calls ended (if not nil).
func (p *Proxy) newRelay(b *Backend, hook *RelayHook, ended func()) *relay {
	p.store.Acquire(b.Addr())
	b.connsTotal.Add(1)
	var rl *relay
	rl = newRelay(b, func(reason string) {
		b.untrack(rl)
		b.connClosed()
		p.store.Release(b.Addr())
		hook.end()
		if c := p.opts.Logger.Check(zapcore.DebugLevel, "websocket closed"); c != nil {
			c.Write(zap.String("backend", b.Addr()), zap.String("reason", reason))
		}
		if ended != nil {
			ended()
		}
	})
	return rl
}

// dropBackend gives up a backend whose handshake succeeded before the
// client could be answered: its connection closes and its reservation ends.
func (p *Proxy) dropBackend(u *Upstream, backend net.Conn, br *bufio.Reader) {
	putReader(br)
	backend.Close()
	u.unreserve()
	p.outcome(u.Addr(), OutcomeFailed)
}

// abandonRelay undoes newRelay for a relay that could not start.
func (p *Proxy) abandonRelay(b *Backend, client, backend net.Conn, hook *RelayHook) {
	client.Close()
	backend.Close()
	b.connClosed()
	p.store.Release(b.Addr())
	hook.end()
	p.outcome(b.Addr(), OutcomeFailed)
}

// passResponseLimit bounds the body of a backend's refusal passed to the
// client; refusals are short, and the connection is not reused.
const passResponseLimit = 64 << 10

// passResponse forwards a backend's non-101 answer (401, 403, ...) to the
// client unchanged, minus hop-by-hop headers.
func (p *Proxy) passResponse(w http.ResponseWriter, conn net.Conn, resp *http.Response, br *bufio.Reader) error {
	defer conn.Close()
	defer putReader(br)
	h := w.Header()
	connection := resp.Header["Connection"]
	for name, values := range resp.Header {
		if !isHopHeader(connection, name) {
			h[name] = values
		}
	}
	w.WriteHeader(resp.StatusCode)
	conn.SetReadDeadline(p.opts.Now().Add(p.opts.HandshakeTimeout))
	_, err := io.Copy(w, io.LimitReader(resp.Body, passResponseLimit))
	if err != nil && !errors.Is(err, io.EOF) {
		p.opts.Logger.Debug("copying backend refusal body", zap.Error(err))
	}
	return nil
}

func (p *Proxy) outcome(backend, outcome string) {
	if p.opts.OnOutcome != nil {
		p.opts.OnOutcome(backend, outcome)
	}
}
