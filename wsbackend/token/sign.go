package token

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// DefaultTTL is how long an issued token stays valid unless told otherwise:
// long enough for a client to receive its assignment and dial the backend,
// short enough that a leaked token is soon useless.
const DefaultTTL = 30 * time.Second

// SignerOptions configure a Signer. The zero value is ready to use.
type SignerOptions struct {
	// TTL is the lifetime Issue gives a token when called with a zero ttl.
	// Zero means DefaultTTL. Keep it below the verifiers' MaxLifetime
	// (5 minutes by default), or backends reject the tokens as too_long_lived.
	TTL time.Duration

	// Now returns the current time. Nil means time.Now; tests inject a fixed
	// clock.
	Now func() time.Time

	// Rand is the source of token IDs. Nil means crypto/rand. Anything else
	// must be unpredictable too, or the replay protection is weakened, and
	// safe for concurrent use if the Signer is used concurrently.
	Rand io.Reader
}

// Signer makes tokens with one key. It is safe for concurrent use. To rotate
// keys, build a Signer with the new key and swap it in once every verifier
// knows the new key.
type Signer struct {
	kid string
	// sign is go-jose's signer for the key, kept as a method value for the
	// reason Key keeps its material in closures: fmt prints a function as an
	// address, never the key inside.
	sign func(payload []byte) (*jose.JSONWebSignature, error)
	ttl  time.Duration
	now  func() time.Time
	rand io.Reader
}

// NewSigner returns a Signer for key, which must be able to sign (an Ed25519
// private key or an HMAC secret). opts may be nil.
func NewSigner(key Key, opts *SignerOptions) (*Signer, error) {
	if !key.CanSign() {
		return nil, fmt.Errorf("token: new signer: key %s cannot sign (need an Ed25519 private key or an HMAC secret)", key)
	}
	var o SignerOptions
	if opts != nil {
		o = *opts
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("token: new signer: negative TTL %s", o.TTL)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Rand == nil {
		o.Rand = rand.Reader
	}
	// The header is {"alg":...,"kid":...,"typ":"JWT"}: go-jose writes alg
	// from the key, and the kid is ours, not one it derives.
	js, err := jose.NewSigner(
		jose.SigningKey{Algorithm: jose.SignatureAlgorithm(key.alg), Key: key.private()},
		(&jose.SignerOptions{}).WithType("JWT").WithHeader("kid", key.id),
	)
	if err != nil {
		return nil, fmt.Errorf("token: new signer: %w", err)
	}
	return &Signer{
		kid:  key.id,
		sign: js.Sign,
		ttl:  o.TTL,
		now:  o.Now,
		rand: o.Rand,
	}, nil
}

// KeyID returns the kid of the signing key.
func (s *Signer) KeyID() string { return s.kid }

// Sign encodes and signs claims exactly as given. It refuses claims that no
// verifier would accept whatever the time (no audience, no ID, no expiry,
// expiry before issue), and tokens longer than MaxTokenLength.
func (s *Signer) Sign(claims Claims) (string, error) {
	if err := claims.check(); err != nil {
		return "", fmt.Errorf("token: signing: %w", err)
	}
	payload, err := json.Marshal(claims)
	if err != nil {
		return "", fmt.Errorf("token: signing: encoding claims: %w", err)
	}
	jws, err := s.sign(payload)
	if err != nil {
		return "", fmt.Errorf("token: signing: %w", err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("token: signing: serialising: %w", err)
	}
	if len(tok) > MaxTokenLength {
		return "", fmt.Errorf("token: signing: token is %d bytes, more than %d", len(tok), MaxTokenLength)
	}
	return tok, nil
}

// Issue makes a token for one backend: aud is audience, sub is subject (may be
// empty), iat and nbf are now, exp is now plus ttl (rounded up to a whole
// second; zero ttl means the Signer's TTL), and jti is 128 fresh random bits.
// It returns the claims too, so that a caller can tell the client when the
// token expires.
func (s *Signer) Issue(audience, subject string, ttl time.Duration) (string, Claims, error) {
	if ttl < 0 {
		return "", Claims{}, fmt.Errorf("token: issuing: negative ttl %s", ttl)
	}
	if ttl == 0 {
		ttl = s.ttl
	}
	if audience == "" {
		return "", Claims{}, errors.New("token: issuing: empty audience")
	}
	jti, err := s.newID()
	if err != nil {
		return "", Claims{}, fmt.Errorf("token: issuing: %w", err)
	}
	now := s.now().Unix()
	secs := int64((ttl + time.Second - 1) / time.Second)
	c := Claims{
		Audience:  audience,
		Subject:   subject,
		IssuedAt:  now,
		NotBefore: now,
		ExpiresAt: now + secs,
		ID:        jti,
	}
	tok, err := s.Sign(c)
	if err != nil {
		return "", Claims{}, err
	}
	return tok, c, nil
}

// newID returns 128 random bits, base64url-encoded (22 characters): enough
// that two tokens never share an ID by chance.
func (s *Signer) newID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(s.rand, b[:]); err != nil {
		return "", fmt.Errorf("reading random token ID: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}
