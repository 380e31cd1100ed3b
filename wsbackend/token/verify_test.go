package token_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// t0 is the fixed "now" of most tests; the fuzz seeds are signed at t0 too.
var t0 = time.Unix(1_700_000_000, 0)

// clock is a settable clock safe for concurrent use.
type clock struct{ ns atomic.Int64 }

func newClock(t time.Time) *clock {
	c := new(clock)
	c.Set(t)
	return c
}
func (c *clock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *clock) Set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

// edKey returns a deterministic Ed25519 private key, so fuzz seeds signed
// with it stay valid across runs.
func edKey(t testing.TB, seed byte) token.Key {
	t.Helper()
	k, err := token.NewEd25519Key("", ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// hmacKey returns a deterministic HMAC key with the given kid.
func hmacKey(t testing.TB, fill byte, kid string) token.Key {
	t.Helper()
	k, err := token.NewHMACKey(kid, bytes.Repeat([]byte{fill}, 32))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustSigner(t testing.TB, k token.Key, c *clock) *token.Signer {
	t.Helper()
	s, err := token.NewSigner(k, &token.SignerOptions{Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustVerifier(t testing.TB, opts token.VerifierOptions) *token.Verifier {
	t.Helper()
	v, err := token.NewVerifier(opts)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func mustIssue(t testing.TB, s *token.Signer, aud string, ttl time.Duration) string {
	t.Helper()
	tok, _, err := s.Issue(aud, "user-1", ttl)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// assemble builds a token from raw JSON and a signing function, to make
// tokens the Signer would never produce.
func assemble(headerJSON, claimsJSON string, sign func(msg []byte) []byte) string {
	msg := b64(headerJSON) + "." + b64(claimsJSON)
	return msg + "." + base64.RawURLEncoding.EncodeToString(sign([]byte(msg)))
}

func hmacWith(secret []byte) func([]byte) []byte {
	return func(msg []byte) []byte {
		m := hmac.New(sha256.New, secret)
		m.Write(msg)
		return m.Sum(nil)
	}
}

func edWith(seed byte) func([]byte) []byte {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	return func(msg []byte) []byte { return ed25519.Sign(priv, msg) }
}

// validClaims are claims a Signer would produce at t0 for backend-a.
func validClaims(jti string) string {
	return fmt.Sprintf(`{"aud":"backend-a","sub":"u","iat":%d,"nbf":%d,"exp":%d,"jti":%q}`,
		t0.Unix(), t0.Unix(), t0.Unix()+30, jti)
}

func wantReason(t *testing.T, err error, reason string) {
	t.Helper()
	if reason == "" {
		if err != nil {
			t.Fatalf("want success, got %v", err)
		}
		return
	}
	var te *token.Error
	if !errors.As(err, &te) {
		t.Fatalf("want *token.Error with reason %s, got %v", reason, err)
	}
	if te.Reason != reason {
		t.Fatalf("want reason %s, got %s (%v)", reason, te.Reason, err)
	}
	if !errors.Is(err, &token.Error{Reason: reason}) {
		t.Fatalf("errors.Is does not match reason %s", reason)
	}
}

func TestVerify(t *testing.T) {
	t.Parallel()
	ed := edKey(t, 1)
	other := edKey(t, 2) // not known to the verifier
	hk := hmacKey(t, 7, "h1")
	edPub := ed.Public()
	pubBytes := edPubOf(1)

	edHeader := fmt.Sprintf(`{"alg":"EdDSA","kid":%q,"typ":"JWT"}`, ed.ID())
	hsHeader := `{"alg":"HS256","kid":"h1","typ":"JWT"}`

	type tc struct {
		name   string
		token  func(s, hs *token.Signer) string
		now    time.Duration // added to t0 at verify time
		reason string
	}
	tests := []tc{
		{"valid ed25519", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, 0, ""},
		{"valid hmac", func(_, hs *token.Signer) string { return mustIssue(t, hs, "backend-a", 0) }, 0, ""},
		{"valid at end of leeway", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, 34 * time.Second, ""},
		{"valid within skew before iat", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, -5 * time.Second, ""},
		{"expired", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, 35 * time.Second, token.ReasonExpired},
		{"long expired", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, time.Hour, token.ReasonExpired},
		{"not yet valid", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) }, -6 * time.Second, token.ReasonNotYetValid},
		{"wrong audience", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-b", 0) }, 0, token.ReasonWrongAudience},
		{"too long lived", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 5*time.Minute+time.Second) }, 0, token.ReasonTooLongLived},
		{"max lifetime is fine", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 5*time.Minute) }, 0, ""},
		{"unknown kid", func(_, _ *token.Signer) string {
			return mustIssue(t, mustSigner(t, other, newClock(t0)), "backend-a", 0)
		}, 0, token.ReasonUnknownKID},
		{"kid of another key, signed by it", func(_, _ *token.Signer) string {
			return assemble(edHeader, validClaims("x"), edWith(2))
		}, 0, token.ReasonBadSignature},
		{"missing kid", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"EdDSA","typ":"JWT"}`, validClaims("x"), edWith(1))
		}, 0, token.ReasonUnknownKID},
		{"forged payload", func(s, _ *token.Signer) string {
			tok := mustIssue(t, s, "backend-b", 0)
			parts := strings.Split(tok, ".")
			return parts[0] + "." + b64(validClaims("forged")) + "." + parts[2]
		}, 0, token.ReasonBadSignature},
		{"flipped signature bit", func(s, _ *token.Signer) string {
			return mutateSig(mustIssue(t, s, "backend-a", 0), func(b []byte) []byte { b[10] ^= 1; return b })
		}, 0, token.ReasonBadSignature},
		{"signature from hmac key under ed kid", func(_, _ *token.Signer) string {
			return assemble(edHeader, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonBadSignature},
		{"alg confusion: HS256 with the Ed25519 public key as secret", func(_, _ *token.Signer) string {
			h := fmt.Sprintf(`{"alg":"HS256","kid":%q,"typ":"JWT"}`, ed.ID())
			return assemble(h, validClaims("x"), hmacWith(pubBytes))
		}, 0, token.ReasonAlgMismatch},
		{"alg confusion: HS256 with the public key PEM as secret", func(_, _ *token.Signer) string {
			h := fmt.Sprintf(`{"alg":"HS256","kid":%q,"typ":"JWT"}`, ed.ID())
			return assemble(h, validClaims("x"), hmacWith(pemOf(t, pubBytes)))
		}, 0, token.ReasonAlgMismatch},
		{"alg confusion: EdDSA header on an HMAC kid", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"EdDSA","kid":"h1","typ":"JWT"}`, validClaims("x"), edWith(1))
		}, 0, token.ReasonAlgMismatch},
		{"alg none with empty signature", func(_, _ *token.Signer) string {
			return b64(`{"alg":"none","kid":"h1"}`) + "." + b64(validClaims("x")) + "."
		}, 0, token.ReasonMalformed},
		{"alg none with a signature", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"none","kid":"h1"}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonAlgMismatch},
		{"alg lower case", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"hs256","kid":"h1"}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonAlgMismatch},
		{"alg RS256", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"RS256","kid":"h1"}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonAlgMismatch},
		{"hmac hand-made valid", func(_, _ *token.Signer) string {
			return assemble(hsHeader, validClaims("hand"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, ""},
		{"crit header", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"HS256","kid":"h1","crit":["exp"]}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"duplicate alg in header", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"none","alg":"HS256","kid":"h1"}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"duplicate aud in claims, validly signed", func(_, _ *token.Signer) string {
			c := strings.Replace(validClaims("x"), `"aud":"backend-a"`, `"aud":"backend-b","aud":"backend-a"`, 1)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"aud upper case name, validly signed", func(_, _ *token.Signer) string {
			c := strings.Replace(validClaims("x"), `"aud"`, `"AUD"`, 1)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"aud array, validly signed", func(_, _ *token.Signer) string {
			c := strings.Replace(validClaims("x"), `"aud":"backend-a"`, `"aud":["backend-a"]`, 1)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"missing jti, validly signed", func(_, _ *token.Signer) string {
			c := strings.Replace(validClaims(""), `,"jti":""`, ``, 1)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"fractional exp, validly signed", func(_, _ *token.Signer) string {
			c := strings.Replace(validClaims("x"), fmt.Sprint(t0.Unix()+30), fmt.Sprint(t0.Unix()+30)+".5", 1)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"iat in the future, validly signed", func(_, _ *token.Signer) string {
			c := fmt.Sprintf(`{"aud":"backend-a","iat":%d,"nbf":%d,"exp":%d,"jti":"x"}`, t0.Unix()+60, t0.Unix(), t0.Unix()+90)
			return assemble(hsHeader, c, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonNotYetValid},
		{"payload not JSON, validly signed", func(_, _ *token.Signer) string {
			return assemble(hsHeader, `not json`, hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"empty", func(_, _ *token.Signer) string { return "" }, 0, token.ReasonMalformed},
		{"garbage", func(_, _ *token.Signer) string { return "hello world" }, 0, token.ReasonMalformed},
		{"two segments", func(s, _ *token.Signer) string {
			tok := mustIssue(t, s, "backend-a", 0)
			return tok[:strings.LastIndexByte(tok, '.')]
		}, 0, token.ReasonMalformed},
		{"four segments", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) + ".AAAA" }, 0, token.ReasonMalformed},
		{"truncated signature", func(s, _ *token.Signer) string {
			return mutateSig(mustIssue(t, s, "backend-a", 0), func(b []byte) []byte { return b[:len(b)-1] })
		}, 0, token.ReasonBadSignature},
		{"signature with a byte appended", func(s, _ *token.Signer) string {
			return mutateSig(mustIssue(t, s, "backend-a", 0), func(b []byte) []byte { return append(b, 0) })
		}, 0, token.ReasonBadSignature},
		{"hmac signature truncated", func(_, hs *token.Signer) string {
			return mutateSig(mustIssue(t, hs, "backend-a", 0), func(b []byte) []byte { return b[:16] })
		}, 0, token.ReasonBadSignature},
		{"hmac signature flipped", func(_, hs *token.Signer) string {
			return mutateSig(mustIssue(t, hs, "backend-a", 0), func(b []byte) []byte { b[31] ^= 0x80; return b })
		}, 0, token.ReasonBadSignature},
		{"truncated to a non-base64 length", func(s, _ *token.Signer) string {
			tok := mustIssue(t, s, "backend-a", 0)
			return tok[:len(tok)-1]
		}, 0, token.ReasonMalformed},
		{"truncated in header", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0)[:10] }, 0, token.ReasonMalformed},
		{"newline in signature", func(s, _ *token.Signer) string {
			tok := mustIssue(t, s, "backend-a", 0)
			return tok[:len(tok)-8] + "\n" + tok[len(tok)-8:]
		}, 0, token.ReasonMalformed},
		{"padding", func(s, _ *token.Signer) string { return mustIssue(t, s, "backend-a", 0) + "==" }, 0, token.ReasonMalformed},
		{"second spelling of an ed25519 signature", func(s, _ *token.Signer) string {
			return respell(mustIssue(t, s, "backend-a", 0))
		}, 0, token.ReasonMalformed},
		{"second spelling of an hmac signature", func(_, hs *token.Signer) string {
			return respell(mustIssue(t, hs, "backend-a", 0))
		}, 0, token.ReasonMalformed},
		{"b64 header, validly signed", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"HS256","kid":"h1","b64":false}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"typ other than JWT, validly signed", func(_, _ *token.Signer) string {
			return assemble(`{"alg":"HS256","kid":"h1","typ":"at+jwt"}`, validClaims("x"), hmacWith(bytes.Repeat([]byte{7}, 32)))
		}, 0, token.ReasonMalformed},
		{"embedded jwk is not used", func(_, _ *token.Signer) string {
			jwk := fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","x":%q}`, base64.RawURLEncoding.EncodeToString(edPubOf(2)))
			return assemble(`{"alg":"EdDSA","kid":"`+other.ID()+`","jwk":`+jwk+`}`, validClaims("x"), edWith(2))
		}, 0, token.ReasonUnknownKID},
		{"embedded jwk under our kid is not used", func(_, _ *token.Signer) string {
			jwk := fmt.Sprintf(`{"kty":"OKP","crv":"Ed25519","x":%q}`, base64.RawURLEncoding.EncodeToString(edPubOf(2)))
			return assemble(`{"alg":"EdDSA","kid":"`+ed.ID()+`","jwk":`+jwk+`}`, validClaims("x"), edWith(2))
		}, 0, token.ReasonBadSignature},
		{"standard base64 alphabet", func(_, _ *token.Signer) string { return "a+b/.c.d" }, 0, token.ReasonMalformed},
		{"too long", func(_, _ *token.Signer) string {
			return strings.Repeat("A", token.MaxTokenLength) + ".A.A"
		}, 0, token.ReasonMalformed},
		{"header not JSON", func(_, _ *token.Signer) string { return b64("{") + "." + b64("{}") + ".AAAA" }, 0, token.ReasonMalformed},
		{"header JSON array", func(_, _ *token.Signer) string { return b64(`["alg"]`) + "." + b64("{}") + ".AAAA" }, 0, token.ReasonMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock(t0)
			s := mustSigner(t, ed, c)
			hs := mustSigner(t, hk, c)
			v := mustVerifier(t, token.VerifierOptions{
				Keys:     []token.Key{edPub, hk},
				Audience: "backend-a",
				Now:      c.Now,
			})
			tok := tt.token(s, hs)
			c.Advance(tt.now)
			claims, err := v.Verify(tok)
			wantReason(t, err, tt.reason)
			if tt.reason != "" {
				if claims != nil {
					t.Fatal("claims returned with an error")
				}
				return
			}
			if claims.Audience != "backend-a" || claims.ID == "" {
				t.Fatalf("claims = %+v", claims)
			}
			// Single use: the same token again is a replay.
			_, err = v.Verify(tok)
			wantReason(t, err, token.ReasonReplayed)
		})
	}
}

// respell changes the unused low bits of tok's last character: the
// signature decodes to the same bytes under a lenient decoder, but the
// spelling is not canonical base64url.
func respell(tok string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, tok[len(tok)-1])
	return tok[:len(tok)-1] + string(alphabet[i^1])
}

func edPubOf(seed byte) ed25519.PublicKey {
	return ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)).Public().(ed25519.PublicKey)
}

// mutateSig re-encodes tok with its decoded signature changed by f, so the
// result is well-formed and only the signature is wrong.
func mutateSig(tok string, f func([]byte) []byte) string {
	i := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil {
		panic(err)
	}
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(f(sig))
}

func TestVerifyRejectionsDoNotUseUpTheID(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	ed := edKey(t, 1)
	s := mustSigner(t, ed, c)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "backend-a", Now: c.Now})
	tok := mustIssue(t, s, "backend-a", 0)

	c.Advance(-10 * time.Second) // too early: rejected, must not be remembered
	_, err := v.Verify(tok)
	wantReason(t, err, token.ReasonNotYetValid)
	c.Set(t0)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("first valid use rejected: %v", err)
	}
}

func TestKeyRotation(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	oldKey, newKey := edKey(t, 1), edKey(t, 2)
	oldSigner, newSigner := mustSigner(t, oldKey, c), mustSigner(t, newKey, c)
	replay := token.NewReplayCache(100)

	// Before: only the old key.
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{oldKey}, Audience: "a", Now: c.Now, Replay: replay})
	_, err := v.Verify(mustIssue(t, newSigner, "a", 0))
	wantReason(t, err, token.ReasonUnknownKID)

	// Overlap: both keys verify.
	if err := v.SetKeys(newKey.Public(), oldKey.Public()); err != nil {
		t.Fatal(err)
	}
	fromOld := mustIssue(t, oldSigner, "a", 0)
	fromOldUsed := mustIssue(t, oldSigner, "a", 0)
	if _, err := v.Verify(fromOldUsed); err != nil {
		t.Fatalf("old key during overlap: %v", err)
	}
	if _, err := v.Verify(mustIssue(t, newSigner, "a", 0)); err != nil {
		t.Fatalf("new key during overlap: %v", err)
	}

	// After: the old key is removed; its tokens fail with unknown_kid even if
	// still fresh, and the replay cache survives the swap.
	if err := v.SetKeys(newKey); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(fromOld)
	wantReason(t, err, token.ReasonUnknownKID)
	if _, err := v.Verify(mustIssue(t, newSigner, "a", 0)); err != nil {
		t.Fatalf("new key after rotation: %v", err)
	}
	if err := v.SetKeys(newKey, oldKey); err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(fromOldUsed)
	wantReason(t, err, token.ReasonReplayed)

	// A rebuilt verifier sharing the cache also remembers.
	v2 := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{oldKey}, Audience: "a", Now: c.Now, Replay: replay})
	_, err = v2.Verify(fromOldUsed)
	wantReason(t, err, token.ReasonReplayed)
}

func TestNewVerifierOptions(t *testing.T) {
	t.Parallel()
	ed := edKey(t, 1)
	tests := []struct {
		name string
		opts token.VerifierOptions
		ok   bool
	}{
		{"minimal", token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a"}, true},
		{"no audience", token.VerifierOptions{Keys: []token.Key{ed}}, false},
		{"no keys", token.VerifierOptions{Audience: "a"}, false},
		{"zero key", token.VerifierOptions{Keys: []token.Key{{}}, Audience: "a"}, false},
		{"duplicate kid", token.VerifierOptions{Keys: []token.Key{ed, ed.Public()}, Audience: "a"}, false},
		{"duplicate kid across algs", token.VerifierOptions{Keys: []token.Key{hmacKey(t, 1, "k"), hmacKey(t, 2, "k")}, Audience: "a"}, false},
		{"leeway above max lifetime", token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Leeway: time.Hour}, false},
		{"sub-second max lifetime", token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", MaxLifetime: time.Millisecond}, false},
		{"no leeway", token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Leeway: -1}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := token.NewVerifier(tt.opts)
			if (err == nil) != tt.ok {
				t.Fatalf("NewVerifier: err = %v, want ok = %v", err, tt.ok)
			}
			if err != nil && strings.Contains(err.Error(), "\x00") {
				t.Fatal("binary in error")
			}
		})
	}
}

func TestLeewayNegativeMeansNone(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	ed := edKey(t, 1)
	s := mustSigner(t, ed, c)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Now: c.Now, Leeway: -1})
	tok := mustIssue(t, s, "a", 0)
	c.Advance(30 * time.Second)
	_, err := v.Verify(tok)
	wantReason(t, err, token.ReasonExpired)
	c.Set(t0.Add(-time.Nanosecond))
	_, err = v.Verify(tok)
	wantReason(t, err, token.ReasonNotYetValid)
}

func TestAllowReplay(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	hk := hmacKey(t, 9, "")
	s := mustSigner(t, hk, c)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{hk}, Audience: "a", Now: c.Now, AllowReplay: true})
	tok := mustIssue(t, s, "a", 0)
	for i := 0; i < 3; i++ {
		if _, err := v.Verify(tok); err != nil {
			t.Fatalf("use %d: %v", i, err)
		}
	}
}

func TestErrorMatching(t *testing.T) {
	t.Parallel()
	err := fmt.Errorf("handling: %w", &token.Error{Reason: token.ReasonExpired, Err: errors.New("detail")})
	if !errors.Is(err, token.ErrExpired) || errors.Is(err, token.ErrReplayed) {
		t.Fatal("errors.Is should match on reason only")
	}
	if got := token.ReasonOf(err); got != token.ReasonExpired {
		t.Fatalf("ReasonOf = %q", got)
	}
	if got := token.ReasonOf(errors.New("x")); got != "error" {
		t.Fatalf("ReasonOf(other) = %q", got)
	}
	if got := token.ReasonOf(nil); got != "" {
		t.Fatalf("ReasonOf(nil) = %q", got)
	}
	if got := err.Error(); got != "handling: token rejected: expired: detail" {
		t.Fatalf("Error() = %q", got)
	}
}

// TestVerifyConcurrent runs many goroutines over shared tokens: each token
// must be accepted exactly once, whatever the interleaving, while the key set
// is swapped underneath. Run with -race.
func TestVerifyConcurrent(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	ed, hk := edKey(t, 1), hmacKey(t, 3, "")
	s, hs := mustSigner(t, ed, c), mustSigner(t, hk, c)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed, hk}, Audience: "a", Now: c.Now, Replay: token.NewReplayCache(10_000)})

	const tokens, workers = 200, 16
	toks := make([]string, tokens)
	for i := range toks {
		if i%2 == 0 {
			toks[i] = mustIssue(t, s, "a", 0)
		} else {
			toks[i] = mustIssue(t, hs, "a", 0)
		}
	}
	var accepted [tokens]atomic.Int32
	var others atomic.Int32
	var wg sync.WaitGroup
	stop := make(chan struct{})
	go func() { // rotate to the same keys in a loop, to race SetKeys with Verify
		for {
			select {
			case <-stop:
				return
			default:
				_ = v.SetKeys(hk, ed)
			}
		}
	}()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := range toks {
				j := (i + w*7) % tokens
				_, err := v.Verify(toks[j])
				switch {
				case err == nil:
					accepted[j].Add(1)
				case !errors.Is(err, token.ErrReplayed):
					others.Add(1)
				}
			}
		}(w)
	}
	wg.Wait()
	close(stop)
	for i := range accepted {
		if n := accepted[i].Load(); n != 1 {
			t.Errorf("token %d accepted %d times, want 1", i, n)
		}
	}
	if n := others.Load(); n != 0 {
		t.Errorf("%d unexpected errors", n)
	}
}

// fuzzSetup returns FuzzVerify's verifier and the only tokens it may accept:
// the ones its signers produce. They are deterministic so that the committed
// corpus (testdata/fuzz/FuzzVerify) keeps valid tokens to mutate.
func fuzzSetup(tb testing.TB) (*token.Verifier, map[string]bool) {
	ed, hk := edKey(tb, 1), hmacKey(tb, 7, "h1")
	c := newClock(t0)
	v := mustVerifier(tb, token.VerifierOptions{
		Keys:        []token.Key{ed.Public(), hk},
		Audience:    "backend-a",
		Now:         c.Now,
		AllowReplay: true, // so every accepted seed stays accepted
	})
	valid := make(map[string]bool)
	ids := make([]byte, 4*16) // distinct, deterministic token IDs
	for i := range ids {
		ids[i] = byte(i)
	}
	rnd := bytes.NewReader(ids)
	for _, k := range []token.Key{ed, hk} {
		s, err := token.NewSigner(k, &token.SignerOptions{Now: c.Now, Rand: rnd})
		if err != nil {
			tb.Fatal(err)
		}
		for _, sub := range []string{"", "user-1"} {
			tok, _, err := s.Issue("backend-a", sub, 0)
			if err != nil {
				tb.Fatal(err)
			}
			valid[tok] = true
		}
	}
	return v, valid
}

// TestFuzzOracle makes sure FuzzVerify's oracle is not vacuous: every token
// it may accept is in fact accepted.
func TestFuzzOracle(t *testing.T) {
	v, valid := fuzzSetup(t)
	if len(valid) != 4 {
		t.Fatalf("%d valid tokens, want 4", len(valid))
	}
	for tok := range valid {
		if _, err := v.Verify(tok); err != nil {
			t.Errorf("valid fuzz token rejected: %v", err)
		}
	}
}

// FuzzVerify: Verify must never panic, and must accept nothing but the
// tokens the signers made: no mutation of a valid token (re-encoding,
// padding, newline, bit flips, header or claims edits) may pass.
func FuzzVerify(f *testing.F) {
	v, valid := fuzzSetup(f)
	for tok := range valid {
		f.Add(tok)
		f.Add(strings.ToUpper(tok))
		f.Add(tok + "=")
		parts := strings.Split(tok, ".")
		f.Add(b64(`{"alg":"none","kid":"h1"}`) + "." + parts[1] + ".")
		f.Add(b64(`{"alg":"HS256","kid":"h1","crit":["b64"],"b64":false}`) + "." + parts[1] + "." + parts[2])
		f.Add(b64(`{"alg":"HS256","kid":"h1","b64":false}`) + "." + parts[1] + "." + parts[2])
		f.Add(respell(tok))
	}
	f.Add("")
	f.Add("..")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		claims, err := v.Verify(tok)
		if err == nil {
			if !valid[tok] {
				t.Fatalf("accepted a token no signer produced: %q", tok)
			}
			if claims == nil || claims.Audience != "backend-a" {
				t.Fatalf("bad claims %+v", claims)
			}
			return
		}
		if token.ReasonOf(err) == "error" || claims != nil {
			t.Fatalf("rejection without a reason or with claims: %v", err)
		}
	})
}

func BenchmarkVerify(b *testing.B) {
	for _, k := range []token.Key{edKey(b, 1), hmacKey(b, 7, "")} {
		b.Run(string(k.Alg()), func(b *testing.B) {
			c := newClock(t0)
			s := mustSigner(b, k, c)
			v := mustVerifier(b, token.VerifierOptions{Keys: []token.Key{k}, Audience: "a", Now: c.Now})
			toks := make([]string, b.N)
			for i := range toks {
				toks[i] = mustIssue(b, s, "a", 0)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := v.Verify(toks[i]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
