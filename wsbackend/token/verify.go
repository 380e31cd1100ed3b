package token

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// MaxTokenLength is the longest token Verify will look at, in bytes. Ours are
// about 300; the bound is checked before any decoding so that junk costs
// nothing.
const MaxTokenLength = 4096

const (
	// DefaultLeeway is the clock skew tolerated between issuer and backend.
	DefaultLeeway = 5 * time.Second
	// DefaultMaxLifetime is the longest exp-iat a verifier accepts.
	DefaultMaxLifetime = 5 * time.Minute
)

// Reasons a token is rejected. They are stable: use them as metric labels and
// in logs, and match on them rather than on error text.
const (
	ReasonMissing         = "missing"           // no token in the request (Middleware only)
	ReasonMalformed       = "malformed"         // not a well-formed token
	ReasonBadSignature    = "bad_signature"     // signature does not verify
	ReasonUnknownKID      = "unknown_kid"       // no key with the header's kid
	ReasonAlgMismatch     = "alg_mismatch"      // header alg is not the key's alg, or is unsupported ("none")
	ReasonExpired         = "expired"           // now is past exp plus leeway
	ReasonNotYetValid     = "not_yet_valid"     // nbf or iat is later than now plus leeway
	ReasonWrongAudience   = "wrong_audience"    // issued for another backend
	ReasonReplayed        = "replayed"          // this jti was already accepted
	ReasonTooLongLived    = "too_long_lived"    // exp-iat exceeds the verifier's MaxLifetime
	ReasonReplayCacheFull = "replay_cache_full" // replay cache full of live entries; failing closed
)

// Error is a rejected token. Reason is one of the Reason constants; Err, if
// set, holds detail for logs. Neither ever contains key material or the token.
//
// errors.Is(err, ErrExpired) and friends match on Reason alone.
type Error struct {
	Reason string
	Err    error
}

// Sentinel errors, one per reason, for errors.Is.
var (
	ErrMissing         = &Error{Reason: ReasonMissing}
	ErrMalformed       = &Error{Reason: ReasonMalformed}
	ErrBadSignature    = &Error{Reason: ReasonBadSignature}
	ErrUnknownKID      = &Error{Reason: ReasonUnknownKID}
	ErrAlgMismatch     = &Error{Reason: ReasonAlgMismatch}
	ErrExpired         = &Error{Reason: ReasonExpired}
	ErrNotYetValid     = &Error{Reason: ReasonNotYetValid}
	ErrWrongAudience   = &Error{Reason: ReasonWrongAudience}
	ErrReplayed        = &Error{Reason: ReasonReplayed}
	ErrTooLongLived    = &Error{Reason: ReasonTooLongLived}
	ErrReplayCacheFull = &Error{Reason: ReasonReplayCacheFull}
)

func (e *Error) Error() string {
	if e.Err == nil {
		return "token rejected: " + e.Reason
	}
	return "token rejected: " + e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Reason.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

// ReasonOf returns the Reason of the *Error in err's chain, "" for nil, and
// "error" for any other error.
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return "error"
}

func reject(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}

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
// length and alphabet (malformed), header (malformed), alg (alg_mismatch), kid
// (unknown_kid), alg against the key (alg_mismatch), signature
// (bad_signature), claims (malformed), lifetime (too_long_lived), exp
// (expired), nbf and iat (not_yet_valid), aud (wrong_audience), and last the
// replay cache (replayed, replay_cache_full), so that only an otherwise valid
// token uses up its ID.
//
// Nothing in the token is trusted before the signature is checked, except the
// kid and alg needed to find the key; the payload is not even decoded.
func (v *Verifier) Verify(token string) (*Claims, error) {
	h64, p64, s64, err := split(token)
	if err != nil {
		return nil, err
	}
	hb, err := decodeSegment(h64)
	if err != nil {
		return nil, reject(ReasonMalformed, "header: %w", err)
	}
	h, err := parseHeader(hb)
	if err != nil {
		return nil, reject(ReasonMalformed, "%w", err)
	}
	if h.Alg != EdDSA && h.Alg != HS256 {
		return nil, reject(ReasonAlgMismatch, "unsupported alg %.32q", h.Alg)
	}
	k, ok := (*v.keys.Load())[h.KID]
	if !ok {
		return nil, reject(ReasonUnknownKID, "kid %.64q", h.KID)
	}
	if h.Alg != k.alg {
		return nil, reject(ReasonAlgMismatch, "token alg %s, key %s is %s", h.Alg, k.id, k.alg)
	}
	sig, err := decodeSegment(s64)
	if err != nil {
		return nil, reject(ReasonMalformed, "signature: %w", err)
	}
	if !k.verify([]byte(token[:len(h64)+1+len(p64)]), sig) {
		return nil, reject(ReasonBadSignature, "kid %s", k.id)
	}

	pb, err := decodeSegment(p64)
	if err != nil {
		return nil, reject(ReasonMalformed, "payload: %w", err)
	}
	c, err := parseClaims(pb)
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

// split checks the token's size and alphabet and cuts it into its three
// base64url segments. Checking the alphabet up front matters: Go's base64
// decoder skips CR and LF, which would let one token be written many ways.
func split(token string) (h, p, s string, err error) {
	if token == "" {
		return "", "", "", reject(ReasonMalformed, "empty token")
	}
	if len(token) > MaxTokenLength {
		return "", "", "", reject(ReasonMalformed, "token is %d bytes, more than %d", len(token), MaxTokenLength)
	}
	dots := 0
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			dots++
		default:
			return "", "", "", reject(ReasonMalformed, "byte %d is not base64url", i)
		}
	}
	if dots != 2 {
		return "", "", "", reject(ReasonMalformed, "want 3 dot-separated segments, got %d", dots+1)
	}
	h, rest, _ := strings.Cut(token, ".")
	p, s, _ = strings.Cut(rest, ".")
	if h == "" || p == "" || s == "" {
		return "", "", "", reject(ReasonMalformed, "empty segment")
	}
	return h, p, s, nil
}

// decodeSegment decodes unpadded base64url strictly: non-zero trailing bits
// are an error, so each byte string has exactly one encoding.
func decodeSegment(s string) ([]byte, error) {
	return base64.RawURLEncoding.Strict().DecodeString(s)
}
