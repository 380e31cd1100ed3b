package token

import (
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

const (
	// DefaultLeeway is the clock skew tolerated between issuer and backend.
	DefaultLeeway = 5 * time.Second
	// DefaultMaxLifetime is the longest exp-iat a verifier accepts.
	DefaultMaxLifetime = 5 * time.Minute
)

// VerifierOptions configure a Verifier.
type VerifierOptions struct {
	// Keys verify tokens, chosen by the kid in the token header. List the
	// current key and, during a rotation, the previous one. Private keys may
	// be given; only their public half is kept. Required.
	Keys []Key

	// Audience is this backend's ID; tokens for any other are rejected.
	// Required.
	Audience string

	// Leeway is the clock skew tolerated on exp, nbf and iat. Zero means
	// DefaultLeeway; a negative value means none.
	Leeway time.Duration

	// MaxLifetime rejects tokens whose exp-iat is longer, which bounds both
	// the damage of a misconfigured issuer and how long the replay cache must
	// remember an ID. Zero means DefaultMaxLifetime.
	MaxLifetime time.Duration

	// Now returns the current time. Nil means time.Now.
	Now func() time.Time

	// Replay remembers accepted token IDs so that each token is accepted
	// once. Nil means a private cache of DefaultReplayCacheSize. Share one
	// cache between verifiers of the same backend (for example when
	// rebuilding a Verifier) or a token may be used once per verifier.
	Replay *ReplayCache

	// AllowReplay turns single use off: the same token is accepted until it
	// expires. Only for tests, or when the application deduplicates IDs
	// itself; Replay is ignored.
	AllowReplay bool
}

// Verifier checks tokens for one backend. It is safe for concurrent use;
// SetKeys swaps the key set atomically for rotation.
type Verifier struct {
	keys        atomic.Pointer[map[string]Key]
	audience    string
	leeway      time.Duration
	maxLifetime int64 // seconds
	now         func() time.Time
	replay      *ReplayCache // nil if replays are allowed
}

// NewVerifier returns a Verifier with opts' defaults filled in.
func NewVerifier(opts VerifierOptions) (*Verifier, error) {
	if opts.Audience == "" {
		return nil, errors.New("token: new verifier: Audience is required")
	}
	switch {
	case opts.Leeway == 0:
		opts.Leeway = DefaultLeeway
	case opts.Leeway < 0:
		opts.Leeway = 0
	}
	if opts.MaxLifetime == 0 {
		opts.MaxLifetime = DefaultMaxLifetime
	}
	if opts.MaxLifetime < time.Second {
		return nil, fmt.Errorf("token: new verifier: MaxLifetime %s is less than a second", opts.MaxLifetime)
	}
	if opts.Leeway > opts.MaxLifetime {
		// Such a leeway would make expiry meaningless.
		return nil, fmt.Errorf("token: new verifier: Leeway %s exceeds MaxLifetime %s", opts.Leeway, opts.MaxLifetime)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	v := &Verifier{
		audience:    opts.Audience,
		leeway:      opts.Leeway,
		maxLifetime: int64(opts.MaxLifetime / time.Second),
		now:         opts.Now,
	}
	if !opts.AllowReplay {
		v.replay = opts.Replay
		if v.replay == nil {
			v.replay = NewReplayCache(DefaultReplayCacheSize)
		}
	}
	if err := v.SetKeys(opts.Keys...); err != nil {
		return nil, fmt.Errorf("token: new verifier: %w", err)
	}
	return v, nil
}

// SetKeys replaces the verification keys atomically, for rotation without
// losing the replay cache: tokens under a kid no longer listed fail with
// unknown_kid from the next Verify on. Keys must be non-empty with distinct
// kids.
func (v *Verifier) SetKeys(keys ...Key) error {
	if len(keys) == 0 {
		return errors.New("no keys")
	}
	m := make(map[string]Key, len(keys))
	for i, k := range keys {
		if k.IsZero() {
			return fmt.Errorf("key %d is the zero Key", i)
		}
		if _, dup := m[k.id]; dup {
			return fmt.Errorf("duplicate kid %q", k.id)
		}
		m[k.id] = k.Public()
	}
	v.keys.Store(&m)
	return nil
}

// Verify checks a token and returns its claims, or an *Error saying why it is
// rejected. The checks run in this order, and the first failure is returned:
// length and spelling (malformed), header JSON (malformed), alg
// (alg_mismatch), the other header members (malformed), kid (unknown_kid),
// alg against the key (alg_mismatch), signature (bad_signature), claims
// (malformed), lifetime (too_long_lived), exp (expired), nbf and iat
// (not_yet_valid), aud (wrong_audience), and last the replay cache
// (replayed, replay_cache_full), so that only an otherwise valid token uses
// up its ID.
//
// Nothing in the token is trusted before the signature is checked, except the
// kid and alg needed to find the key; the claims are not even parsed.
func (v *Verifier) Verify(token string) (*Claims, error) {
	jws, h, err := parse(token)
	if err != nil {
		return nil, err
	}
	k, ok := (*v.keys.Load())[h.KeyID]
	if !ok {
		return nil, reject(ReasonUnknownKID, "kid %.64q", h.KeyID)
	}
	if Alg(h.Algorithm) != k.alg {
		return nil, reject(ReasonAlgMismatch, "token alg %s, key %s is %s", h.Algorithm, k.id, k.alg)
	}
	// go-jose picks the algorithm from the Go type of the key we pass, an
	// ed25519.PublicKey or an HMAC secret, and refuses a header alg that
	// does not fit it: a second guard against algorithm confusion.
	payload, err := jws.Verify(k.public())
	if err != nil {
		return nil, reject(ReasonBadSignature, "kid %s: %w", k.id, err)
	}

	c, err := decodeClaims(payload)
	if err != nil {
		return nil, reject(ReasonMalformed, "%w", err)
	}
	if err := c.check(); err != nil {
		return nil, reject(ReasonMalformed, "claims: %w", err)
	}
	now := v.now()
	if err := v.checkTimes(&c, now); err != nil {
		return nil, err
	}
	if c.Audience != v.audience {
		return nil, reject(ReasonWrongAudience, "aud %.64q", c.Audience)
	}
	if v.replay != nil {
		// Remember the ID for as long as the token could still pass the
		// checks above; after that, expiry rejects it anyway.
		until := time.Unix(c.ExpiresAt, 0).Add(v.leeway)
		if err := v.replay.Use(c.ID, until, now); err != nil {
			return nil, err
		}
	}
	return &c, nil
}

// checkTimes applies MaxLifetime, exp, nbf and iat, with leeway. All times
// were range-checked by Claims.check, so the arithmetic cannot overflow.
func (v *Verifier) checkTimes(c *Claims, now time.Time) error {
	if life := c.ExpiresAt - c.IssuedAt; life > v.maxLifetime {
		return reject(ReasonTooLongLived, "lifetime %ds exceeds %ds", life, v.maxLifetime)
	}
	if !now.Before(time.Unix(c.ExpiresAt, 0).Add(v.leeway)) {
		return reject(ReasonExpired, "exp %d, now %d, leeway %s", c.ExpiresAt, now.Unix(), v.leeway)
	}
	// An iat in the future is refused like an nbf in the future: otherwise a
	// token could be valid for longer than MaxLifetime from now on.
	notBefore := max(c.NotBefore, c.IssuedAt)
	if now.Add(v.leeway).Before(time.Unix(notBefore, 0)) {
		return reject(ReasonNotYetValid, "nbf/iat %d, now %d, leeway %s", notBefore, now.Unix(), v.leeway)
	}
	return nil
}
