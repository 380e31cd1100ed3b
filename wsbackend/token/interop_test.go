package token_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// jsCase is one token for verify.mjs, in the JSON it reads.
type jsCase struct {
	Name       string    `json:"name"`
	Token      string    `json:"token"`
	Alg        token.Alg `json:"alg"`
	Algorithms []string  `json:"algorithms,omitempty"`
	Key        string    `json:"key"` // SPKI PEM for EdDSA, base64url secret for HS256
	Audience   string    `json:"audience"`
	Now        int64     `json:"now"`
}

// jsResult is what verify.mjs answers for one case.
type jsResult struct {
	Name    string            `json:"name"`
	OK      bool              `json:"ok"`
	Header  map[string]string `json:"header"`
	Payload map[string]any    `json:"payload"`
	Code    string            `json:"code"`
	Message string            `json:"message"`
}

// TestTokensVerifyInNodeJose checks the wire format against a verifier
// written by someone else: jose, the usual JWT library of Node.js, as a
// backend in JavaScript would use it. Our tokens must verify there with the
// claims we put in, and forged ones must not. Each case also goes through our
// own Verifier, which must agree.
func TestTokensVerifyInNodeJose(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := filepath.Join("testdata", "jsinterop")
	node := requireTool(t, "node")
	installNodeModules(ctx, t, dir)
	// go test caches a passing result until a file the test opened or
	// stat'ed changes; node reads these, so stat them for the cache's sake.
	for _, name := range []string{"verify.mjs", "package-lock.json"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}

	c := newClock(t0)
	edPriv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	edPub := edPriv.Public().(ed25519.PublicKey)
	ed := edKey(t, 1)
	secret := bytes.Repeat([]byte{7}, 32)
	hk := hmacKey(t, 7, "h1")
	// A key an attacker holds, under the kid of ours.
	impostor, err := token.NewEd25519Key(ed.ID(), ed25519.NewKeyFromSeed(bytes.Repeat([]byte{9}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	otherSecret, err := token.NewHMACKey("h1", bytes.Repeat([]byte{8}, 32))
	if err != nil {
		t.Fatal(err)
	}
	edPEM := string(pemOf(t, edPub))
	secret64 := base64.RawURLEncoding.EncodeToString(secret)

	edTok, edClaims, err := mustSigner(t, ed, c).Issue("backend-a", "alice", 0)
	if err != nil {
		t.Fatal(err)
	}
	hsTok, hsClaims, err := mustSigner(t, hk, c).Issue("backend-a", "", 0)
	if err != nil {
		t.Fatal(err)
	}
	parts := strings.Split(edTok, ".")
	tampered := parts[0] + "." + b64(strings.Replace(mustB64Decode(t, parts[1]), `"aud":"backend-a"`, `"aud":"backend-b"`, 1)) + "." + parts[2]
	confused := assemble(fmt.Sprintf(`{"alg":"HS256","kid":%q,"typ":"JWT"}`, ed.ID()), validClaims("confused"), hmacWith(edPub))

	tests := []struct {
		jsCase
		ok     bool
		code   string       // jose's error code; "" = any
		claims token.Claims // wanted on success
	}{
		{jsCase{Name: "ed25519 token from Signer", Token: edTok, Alg: token.EdDSA, Key: edPEM}, true, "", edClaims},
		{jsCase{Name: "hs256 token from Signer", Token: hsTok, Alg: token.HS256, Key: secret64}, true, "", hsClaims},
		{jsCase{Name: "signed by another Ed25519 key under our kid", Token: mustIssue(t, mustSigner(t, impostor, c), "backend-a", 0), Alg: token.EdDSA, Key: edPEM},
			false, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED", token.Claims{}},
		{jsCase{Name: "signed by another HMAC secret under our kid", Token: mustIssue(t, mustSigner(t, otherSecret, c), "backend-a", 0), Alg: token.HS256, Key: secret64},
			false, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED", token.Claims{}},
		{jsCase{Name: "payload tampered: aud changed", Token: tampered, Alg: token.EdDSA, Key: edPEM, Audience: "backend-b"},
			false, "ERR_JWS_SIGNATURE_VERIFICATION_FAILED", token.Claims{}},
		{jsCase{Name: "alg confusion: HS256 keyed with the Ed25519 public key", Token: confused, Alg: token.EdDSA, Key: edPEM},
			false, "ERR_JOSE_ALG_NOT_ALLOWED", token.Claims{}},
		{jsCase{Name: "alg confusion with both algs allowed", Token: confused, Alg: token.EdDSA, Algorithms: []string{"EdDSA", "HS256"}, Key: edPEM},
			false, "TypeError", token.Claims{}},
		{jsCase{Name: "alg none", Token: b64(`{"alg":"none","typ":"JWT"}`) + "." + parts[1] + ".", Alg: token.EdDSA, Key: edPEM},
			false, "ERR_JOSE_ALG_NOT_ALLOWED", token.Claims{}},
		{jsCase{Name: "for another backend", Token: edTok, Alg: token.EdDSA, Key: edPEM, Audience: "backend-b"},
			false, "ERR_JWT_CLAIM_VALIDATION_FAILED", token.Claims{}},
		{jsCase{Name: "expired", Token: edTok, Alg: token.EdDSA, Key: edPEM, Now: t0.Unix() + 60},
			false, "ERR_JWT_EXPIRED", token.Claims{}},
	}
	cases := make([]jsCase, len(tests))
	for i := range tests {
		tc := &tests[i].jsCase
		if tc.Audience == "" {
			tc.Audience = "backend-a"
		}
		if tc.Now == 0 {
			tc.Now = t0.Unix()
		}
		cases[i] = *tc
	}
	results := runVerifyJS(ctx, t, node, dir, cases)

	for i, tt := range tests {
		res := results[i]
		t.Logf("jose: %s: ok=%v %s %s", res.Name, res.OK, res.Code, res.Message)
		if res.Name != tt.Name {
			t.Fatalf("result %d is for %q, want %q", i, res.Name, tt.Name)
		}
		if res.OK != tt.ok || tt.code != "" && res.Code != tt.code {
			t.Errorf("%s: jose says ok=%v %s (%s), want ok=%v %s", tt.Name, res.OK, res.Code, res.Message, tt.ok, tt.code)
		}
		if tt.ok {
			if got := claimsOf(t, res.Payload); got != tt.claims {
				t.Errorf("%s: jose read claims %+v, want %+v", tt.Name, got, tt.claims)
			}
			if res.Header["kid"] == "" || res.Header["typ"] != "JWT" || res.Header["alg"] != string(tt.Alg) {
				t.Errorf("%s: jose read header %v", tt.Name, res.Header)
			}
		}

		// Our own Verifier must agree.
		v := mustVerifier(t, token.VerifierOptions{
			Keys: []token.Key{ed.Public(), hk}, Audience: tt.Audience,
			Now: newClock(time.Unix(tt.Now, 0)).Now,
		})
		if _, err := v.Verify(tt.Token); (err == nil) != tt.ok {
			t.Errorf("%s: our Verifier says %v, jose says ok=%v", tt.Name, err, res.OK)
		}
	}
}

// runVerifyJS runs verify.mjs on cases and returns its results in order.
func runVerifyJS(ctx context.Context, t *testing.T, node, dir string, cases []jsCase) []jsResult {
	t.Helper()
	in, err := json.Marshal(cases)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, node, "verify.mjs")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("running node verify.mjs: %v\n%s", err, stderr.Bytes())
	}
	var results []jsResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var r jsResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("reading verify.mjs output %q: %v", sc.Bytes(), err)
		}
		results = append(results, r)
	}
	if len(results) != len(cases) {
		t.Fatalf("verify.mjs answered %d of %d cases:\n%s\n%s", len(results), len(cases), out, stderr.Bytes())
	}
	return results
}

// claimsOf converts a payload as jose returned it back into Claims.
func claimsOf(t *testing.T, payload map[string]any) token.Claims {
	t.Helper()
	b, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	var c token.Claims
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("payload %s: %v", b, err)
	}
	return c
}

func mustB64Decode(t *testing.T, s string) string {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// installNodeModules runs npm ci in dir unless its dependencies are already
// there, so that a fresh clone needs nothing but node and npm.
func installNodeModules(ctx context.Context, t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "jose", "package.json")); err == nil {
		return
	} else if !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	npm := requireTool(t, "npm")
	cmd := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--loglevel=error")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		unavailable(t, "npm ci in %s failed: %v\n%s", dir, err, out)
	}
}

// requireTool returns the path of a program the test needs, or stops the
// test if it is not installed (see unavailable).
func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not found (install Node.js 20 or later with npm): %v", name, err)
	}
	return path
}

// unavailable skips the test for want of something outside the repository,
// except under CI=true, where it fails: a CI machine that lacks it must not
// pass by skipping.
func unavailable(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: "+format, args...)
	}
	t.Skipf(format, args...)
}
