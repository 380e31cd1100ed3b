package token_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func TestIssue(t *testing.T) {
	t.Parallel()
	now := t0.Add(900 * time.Millisecond) // iat rounds down, exp up
	s, err := token.NewSigner(edKey(t, 1), &token.SignerOptions{
		Now:  func() time.Time { return now },
		Rand: bytes.NewReader(bytes.Repeat([]byte{0xfb}, 64)),
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ttl     time.Duration
		wantExp int64
	}{
		{0, t0.Unix() + 30}, // DefaultTTL
		{10 * time.Second, t0.Unix() + 10},
		{1500 * time.Millisecond, t0.Unix() + 2},
		{time.Nanosecond, t0.Unix() + 1},
	}
	for _, tt := range tests {
		tok, c, err := s.Issue("backend-a", "alice", tt.ttl)
		if err != nil {
			t.Fatal(err)
		}
		want := token.Claims{
			Audience: "backend-a", Subject: "alice",
			IssuedAt: t0.Unix(), NotBefore: t0.Unix(), ExpiresAt: tt.wantExp,
			ID: base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{0xfb}, 16)),
		}
		if c != want {
			t.Errorf("ttl %s: claims %+v, want %+v", tt.ttl, c, want)
		}
		// The token is plain JWS compact: any JWT tool can read it.
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("token %q has %d segments", tok, len(parts))
		}
		var hdr map[string]string
		mustDecodeJSON(t, parts[0], &hdr)
		if hdr["alg"] != "EdDSA" || hdr["typ"] != "JWT" || hdr["kid"] != s.KeyID() || len(hdr) != 3 {
			t.Errorf("header %v", hdr)
		}
		var got token.Claims
		mustDecodeJSON(t, parts[1], &got)
		if got != want {
			t.Errorf("payload %+v, want %+v", got, want)
		}
		if len(tok) > 350 {
			t.Errorf("token is %d bytes; expected about 300", len(tok))
		}
	}
}

func mustDecodeJSON(t *testing.T, seg string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

func TestIssueUniqueIDs(t *testing.T) {
	t.Parallel()
	s := mustSigner(t, hmacKey(t, 1, ""), newClock(t0))
	seen := make(map[string]bool)
	for i := 0; i < 1000; i++ {
		_, c, err := s.Issue("a", "", 0)
		if err != nil {
			t.Fatal(err)
		}
		if seen[c.ID] || len(c.ID) != 22 {
			t.Fatalf("jti %q repeated or not 128 bits", c.ID)
		}
		seen[c.ID] = true
	}
}

func TestSignerErrors(t *testing.T) {
	t.Parallel()
	ed := edKey(t, 1)
	if _, err := token.NewSigner(ed.Public(), nil); err == nil {
		t.Error("signer from a public key")
	}
	if _, err := token.NewSigner(token.Key{}, nil); err == nil {
		t.Error("signer from the zero key")
	}
	if _, err := token.NewSigner(ed, &token.SignerOptions{TTL: -time.Second}); err == nil {
		t.Error("negative TTL accepted")
	}

	s := mustSigner(t, ed, newClock(t0))
	if _, _, err := s.Issue("", "x", 0); err == nil {
		t.Error("empty audience accepted")
	}
	if _, _, err := s.Issue("a", "x", -time.Second); err == nil {
		t.Error("negative ttl accepted")
	}
	if _, _, err := s.Issue("a", "x", time.Duration(1<<63-1)); err == nil {
		t.Error("ttl beyond year 9999 accepted")
	}
	if _, _, err := s.Issue("a", strings.Repeat("x", token.MaxTokenLength), 0); err == nil {
		t.Error("token longer than MaxTokenLength produced")
	}
	ok := token.Claims{Audience: "a", IssuedAt: 1, NotBefore: 1, ExpiresAt: 2, ID: "j"}
	if _, err := s.Sign(ok); err != nil {
		t.Errorf("Sign(%+v): %v", ok, err)
	}
	for _, bad := range []token.Claims{
		{IssuedAt: 1, ExpiresAt: 2, ID: "j"},
		{Audience: "a", IssuedAt: 1, ExpiresAt: 2},
		{Audience: "a", IssuedAt: 1, ID: "j"},
		{Audience: "a", ExpiresAt: 2, ID: "j"},
		{Audience: "a", IssuedAt: 3, ExpiresAt: 2, ID: "j"},
	} {
		if _, err := s.Sign(bad); err == nil {
			t.Errorf("Sign(%+v) succeeded", bad)
		}
	}

	broken, err := token.NewSigner(ed, &token.SignerOptions{Rand: bytes.NewReader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := broken.Issue("a", "", 0); err == nil {
		t.Error("Issue without randomness succeeded")
	}
}

// Example shows the whole flow: the balancer issues a token for the backend
// it picked, the backend verifies it once.
func Example() {
	// Normally: wskeygen -type ed25519 -out keys/, then token.LoadKeyFile on
	// the balancer (keys/<kid>.key) and on each backend (keys/<kid>.pub).
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	signingKey, err := token.NewEd25519Key("", priv)
	if err != nil {
		panic(err)
	}

	// Balancer side, in /assign.
	signer, err := token.NewSigner(signingKey, nil)
	if err != nil {
		panic(err)
	}
	tok, _, err := signer.Issue("backend-7", "alice", 0) // 0: the default 30s
	if err != nil {
		panic(err)
	}

	// Backend side: it has only the public key.
	verifier, err := token.NewVerifier(token.VerifierOptions{
		Keys:     []token.Key{signingKey.Public()},
		Audience: "backend-7",
	})
	if err != nil {
		panic(err)
	}
	claims, err := verifier.Verify(tok)
	fmt.Println(claims.Subject, claims.ExpiresAt-claims.IssuedAt, err)

	// The same token a second time is a replay.
	_, err = verifier.Verify(tok)
	fmt.Println(token.ReasonOf(err), errors.Is(err, token.ErrReplayed))
	// Output:
	// alice 30 <nil>
	// replayed true
}

func BenchmarkIssue(b *testing.B) {
	for _, k := range []token.Key{edKey(b, 1), hmacKey(b, 7, "")} {
		b.Run(string(k.Alg()), func(b *testing.B) {
			s := mustSigner(b, k, newClock(t0))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				if _, _, err := s.Issue("backend-a", "alice", 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
