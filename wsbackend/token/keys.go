package token

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// Alg names a signature algorithm as it appears in the token header.
type Alg string

// The two algorithms a Key can have. There is deliberately no "none".
const (
	// EdDSA is Ed25519 (RFC 8037). The balancer holds the private key and
	// backends only the public one, so a compromised backend cannot mint
	// tokens for its peers. Prefer it.
	EdDSA Alg = "EdDSA"
	// HS256 is HMAC-SHA256 with a shared secret. Every holder of the secret
	// can mint tokens, backends included.
	HS256 Alg = "HS256"
)

// MinHMACSecretLength is the shortest HMAC secret accepted, in bytes: the
// output size of SHA-256, as RFC 7518 section 3.2 requires for HS256.
const MinHMACSecretLength = 32

// maxKIDLength bounds key IDs; a kid travels in every token header.
const maxKIDLength = 64

// Key is one signing or verification key with its key ID (kid) and algorithm.
//
// An Ed25519 key is either private (it can sign and verify) or public (verify
// only); an HMAC key does both. The zero Key is invalid.
//
// Key material never leaves through formatting: String, GoString, Format and
// LogValue show only the kid and the algorithm, and error messages from this
// package never quote it.
type Key struct {
	id  string
	alg Alg
	// The material is captured by these closures instead of being stored in
	// fields. fmt walks into the unexported fields of any struct holding a
	// Key (a Signer printed with %s would dump raw bytes, pointer or not),
	// where our Format method cannot intervene; a function value prints as
	// an address only. Each returns the key in the Go type go-jose takes:
	// ed25519.PrivateKey, ed25519.PublicKey, or the HMAC secret as []byte.
	private func() any // nil for a public key
	public  func() any // nil only in the zero Key
}

// NewEd25519Key returns a signing key from an Ed25519 private key. An empty
// kid is derived from the public key (see NewEd25519PublicKey), so the
// balancer and the backends agree on it without configuration.
func NewEd25519Key(kid string, priv ed25519.PrivateKey) (Key, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return Key{}, fmt.Errorf("token: Ed25519 private key must be %d bytes, got %d", ed25519.PrivateKeySize, len(priv))
	}
	// Rebuild from the seed: it copies, so later changes to the caller's
	// slice cannot alter the key, and it recomputes the public half, which a
	// 64-byte private key merely carries and could carry wrong.
	priv = ed25519.NewKeyFromSeed(priv.Seed())
	pub := priv.Public().(ed25519.PublicKey)
	k, err := newKey(kid, EdDSA, pub, func() any { return pub })
	if err != nil {
		return Key{}, err
	}
	k.private = func() any { return priv }
	return k, nil
}

// NewEd25519PublicKey returns a verification-only key. An empty kid is
// derived: the first 8 bytes of the SHA-256 of the 32-byte public key,
// base64url-encoded (11 characters).
func NewEd25519PublicKey(kid string, pub ed25519.PublicKey) (Key, error) {
	if len(pub) != ed25519.PublicKeySize {
		return Key{}, fmt.Errorf("token: Ed25519 public key must be %d bytes, got %d", ed25519.PublicKeySize, len(pub))
	}
	pub = bytes.Clone(pub)
	return newKey(kid, EdDSA, pub, func() any { return pub })
}

// NewHMACKey returns an HS256 key from a raw secret of at least
// MinHMACSecretLength bytes. An empty kid is derived from the first 8 bytes of
// the secret's SHA-256. That reveals nothing useful: anyone holding a token can
// already test guesses of the secret against its signature.
func NewHMACKey(kid string, secret []byte) (Key, error) {
	if len(secret) < MinHMACSecretLength {
		return Key{}, fmt.Errorf("token: HMAC secret must be at least %d bytes, got %d", MinHMACSecretLength, len(secret))
	}
	secret = bytes.Clone(secret)
	material := func() any { return secret }
	k, err := newKey(kid, HS256, secret, material)
	if err != nil {
		return Key{}, err
	}
	k.private = material
	return k, nil
}

func newKey(kid string, alg Alg, idSource []byte, public func() any) (Key, error) {
	if kid == "" {
		sum := sha256.Sum256(idSource)
		kid = base64.RawURLEncoding.EncodeToString(sum[:8])
	}
	if err := checkKID(kid); err != nil {
		return Key{}, err
	}
	return Key{id: kid, alg: alg, public: public}, nil
}

// checkKID accepts 1 to 64 URL-unreserved characters. The limit keeps headers
// small; the alphabet keeps kids safe in file names (wskeygen writes
// <kid>.key), URLs and logs.
func checkKID(kid string) error {
	if kid == "" || len(kid) > maxKIDLength {
		return fmt.Errorf("token: kid must be 1 to %d characters, got %d", maxKIDLength, len(kid))
	}
	for i := 0; i < len(kid); i++ {
		c := kid[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return fmt.Errorf("token: kid %q may only contain A-Z a-z 0-9 - _ . ~", kid)
		}
	}
	return nil
}

// ParseKey parses key material as written by wskeygen:
//
//   - a PEM "PRIVATE KEY" block (PKCS#8) holding an Ed25519 private key;
//   - a PEM "PUBLIC KEY" block (PKIX) holding an Ed25519 public key;
//   - otherwise, an HMAC secret as base64 or base64url text, padded or not,
//     surrounding whitespace ignored, decoding to at least MinHMACSecretLength
//     bytes.
//
// Anything that looks like PEM is parsed only as PEM, never reinterpreted as
// an HMAC secret: using a public key as a shared secret is the classic
// algorithm-confusion forgery. An empty kid is derived from the key.
func ParseKey(data []byte, kid string) (Key, error) {
	text := bytes.TrimSpace(data)
	if bytes.Contains(text, []byte("-----BEGIN")) {
		return parsePEMKey(text, kid)
	}
	if len(text) == 0 {
		return Key{}, errors.New("token: parsing key: empty input")
	}
	secret, err := decodeSecret(string(text))
	if err != nil {
		return Key{}, fmt.Errorf("token: parsing HMAC secret: %w", err)
	}
	return NewHMACKey(kid, secret)
}

// LoadKeyFile reads and parses a key file; see ParseKey.
func LoadKeyFile(path, kid string) (Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Key{}, fmt.Errorf("token: loading key: %w", err)
	}
	k, err := ParseKey(data, kid)
	if err != nil {
		return Key{}, fmt.Errorf("%w (file %s)", err, path)
	}
	return k, nil
}

func parsePEMKey(text []byte, kid string) (Key, error) {
	block, rest := pem.Decode(text)
	if block == nil {
		return Key{}, errors.New("token: parsing key: invalid PEM")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		// A file with several blocks is ambiguous; refuse rather than guess.
		return Key{}, errors.New("token: parsing key: more than one PEM block")
	}
	if len(block.Headers) != 0 {
		return Key{}, errors.New("token: parsing key: encrypted or annotated PEM is not supported")
	}
	switch block.Type {
	case "PRIVATE KEY":
		k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return Key{}, fmt.Errorf("token: parsing PKCS#8 private key: %w", err)
		}
		priv, ok := k.(ed25519.PrivateKey)
		if !ok {
			return Key{}, fmt.Errorf("token: parsing private key: want Ed25519, got %s", keyTypeName(k))
		}
		return NewEd25519Key(kid, priv)
	case "PUBLIC KEY":
		k, err := x509.ParsePKIXPublicKey(block.Bytes)
		if err != nil {
			return Key{}, fmt.Errorf("token: parsing PKIX public key: %w", err)
		}
		pub, ok := k.(ed25519.PublicKey)
		if !ok {
			return Key{}, fmt.Errorf("token: parsing public key: want Ed25519, got %s", keyTypeName(k))
		}
		return NewEd25519PublicKey(kid, pub)
	default:
		return Key{}, fmt.Errorf("token: parsing key: unsupported PEM block %q (want PRIVATE KEY or PUBLIC KEY)", block.Type)
	}
}

// keyTypeName names a parsed key's type without printing its value.
func keyTypeName(k any) string { return fmt.Sprintf("%T", k) }

// decodeSecret accepts both base64 alphabets, with or without padding. The
// two alphabets differ only in characters the other never uses, so mapping
// one onto the other cannot change a valid secret.
func decodeSecret(s string) ([]byte, error) {
	s = strings.NewReplacer("-", "+", "_", "/").Replace(strings.TrimRight(s, "="))
	b, err := base64.RawStdEncoding.Strict().DecodeString(s)
	if err != nil {
		// The base64 error names only an offset, never the input.
		return nil, fmt.Errorf("not base64 or base64url: %w", err)
	}
	return b, nil
}

// ID returns the key ID carried in the "kid" header of tokens.
func (k Key) ID() string { return k.id }

// Alg returns the key's algorithm.
func (k Key) Alg() Alg { return k.alg }

// IsZero reports whether k is the zero Key.
func (k Key) IsZero() bool { return k.public == nil }

// CanSign reports whether k holds private material: an Ed25519 private key or
// an HMAC secret.
func (k Key) CanSign() bool { return k.private != nil }

// Public returns the verification half of k: for an Ed25519 private key, the
// public key under the same kid; otherwise k itself (an HMAC secret is its own
// verification key).
func (k Key) Public() Key {
	if k.alg == HS256 {
		return k
	}
	return Key{id: k.id, alg: k.alg, public: k.public}
}

// String returns the kid and algorithm, never the material.
func (k Key) String() string {
	if k.IsZero() {
		return "token.Key{}"
	}
	kind := "public"
	if k.CanSign() {
		kind = "private"
		if k.alg == HS256 {
			kind = "secret"
		}
	}
	return fmt.Sprintf("token.Key{kid=%s alg=%s %s}", k.id, k.alg, kind)
}

// GoString is String: %#v must not dump the material either.
func (k Key) GoString() string { return k.String() }

// Format makes every verb (%v, %+v, %#v, %s, %x, %q, ...) print String.
func (k Key) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(k.String())) }

// LogValue implements slog.LogValuer with the kid and algorithm only.
func (k Key) LogValue() slog.Value {
	return slog.GroupValue(slog.String("kid", k.id), slog.String("alg", string(k.alg)))
}
