package token_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func pemOf(t testing.TB, key any) []byte {
	t.Helper()
	var block *pem.Block
	switch k := key.(type) {
	case ed25519.PublicKey, *ecdsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PUBLIC KEY", Bytes: der}
	default:
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	}
	return pem.EncodeToMemory(block)
}

func TestParseKey(t *testing.T) {
	t.Parallel()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	secret := make([]byte, 32)
	rand.Read(secret)
	privPEM, pubPEM := pemOf(t, priv), pemOf(t, pub)
	edKID := mustParse(t, pubPEM, "").ID()
	hmacKID := mustParse(t, []byte(base64.RawURLEncoding.EncodeToString(secret)), "").ID()

	tests := []struct {
		name    string
		data    []byte
		kid     string
		alg     token.Alg
		canSign bool
		wantKID string // "" = don't care; set when errors are not expected
		err     string // substring; "" = success
	}{
		{"ed25519 private PKCS#8", privPEM, "", token.EdDSA, true, edKID, ""},
		{"ed25519 public PKIX", pubPEM, "", token.EdDSA, false, edKID, ""},
		{"public with text before and blank lines after", append(append([]byte("Key for backends\n"), pubPEM...), "\n\n"...), "", token.EdDSA, false, edKID, ""},
		{"explicit kid", pubPEM, "2024-06.a", token.EdDSA, false, "2024-06.a", ""},
		{"hmac base64url raw", []byte(base64.RawURLEncoding.EncodeToString(secret)), "", token.HS256, true, hmacKID, ""},
		{"hmac base64url padded", []byte(base64.URLEncoding.EncodeToString(secret)), "", token.HS256, true, hmacKID, ""},
		{"hmac base64 std padded with newline", []byte(base64.StdEncoding.EncodeToString(secret) + "\n"), "", token.HS256, true, hmacKID, ""},
		{"hmac base64 std raw", []byte(base64.RawStdEncoding.EncodeToString(secret)), "", token.HS256, true, hmacKID, ""},
		{"hmac 64 bytes", []byte(base64.RawURLEncoding.EncodeToString(append(secret, secret...))), "", token.HS256, true, "", ""},
		{"hmac too short", []byte(base64.RawURLEncoding.EncodeToString(secret[:31])), "", "", false, "", "at least 32 bytes"},
		{"hmac not base64", []byte("this is not a secret!!"), "", "", false, "", "not base64"},
		{"hmac non-canonical trailing bits", []byte(base64.RawURLEncoding.EncodeToString(secret)[:42] + "B"), "", "", false, "", "not base64"},
		{"empty", nil, "", "", false, "", "empty"},
		{"whitespace only", []byte(" \n\t"), "", "", false, "", "empty"},
		{"invalid kid", pubPEM, "a/b", "", false, "", "kid"},
		{"kid too long", pubPEM, strings.Repeat("k", 65), "", false, "", "kid"},
		{"ecdsa private", pemOf(t, ec), "", "", false, "", "want Ed25519"},
		{"ecdsa public", pemOf(t, &ec.PublicKey), "", "", false, "", "want Ed25519"},
		{"two blocks", append(append([]byte{}, privPEM...), pubPEM...), "", "", false, "", "more than one PEM block"},
		{"certificate block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1}}), "", "", false, "", "unsupported PEM block"},
		{"encrypted PEM", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte{1}}), "", "", false, "", "encrypted"},
		{"corrupt DER", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{0x30, 0x03, 1, 2, 3}}), "", "", false, "", "PKIX"},
		{"broken PEM never becomes an HMAC secret", []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA"), "", "", false, "", "invalid PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			k, err := token.ParseKey(tt.data, tt.kid)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if k.Alg() != tt.alg || k.CanSign() != tt.canSign || k.IsZero() {
				t.Fatalf("got %v (CanSign %v)", k, k.CanSign())
			}
			if tt.wantKID != "" && k.ID() != tt.wantKID {
				t.Fatalf("kid = %q, want %q", k.ID(), tt.wantKID)
			}
		})
	}
}

func mustParse(t testing.TB, data []byte, kid string) token.Key {
	t.Helper()
	k, err := token.ParseKey(data, kid)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestDerivedKID(t *testing.T) {
	t.Parallel()
	k := edKey(t, 1)
	if len(k.ID()) != 11 {
		t.Fatalf("derived kid %q should be 11 characters", k.ID())
	}
	if k.Public().ID() != k.ID() {
		t.Fatal("public half must keep the kid")
	}
	if edKey(t, 2).ID() == k.ID() {
		t.Fatal("different keys, same kid")
	}
	if k.Public().CanSign() {
		t.Fatal("public half can sign")
	}
	h := hmacKey(t, 1, "")
	if h.Public().ID() != h.ID() || !h.Public().CanSign() {
		t.Fatal("HMAC key should be its own public half")
	}
}

func TestConstructorsCheckSizes(t *testing.T) {
	t.Parallel()
	if _, err := token.NewEd25519Key("", make([]byte, 31)); err == nil {
		t.Error("short private key accepted")
	}
	if _, err := token.NewEd25519PublicKey("", make([]byte, 33)); err == nil {
		t.Error("long public key accepted")
	}
	if _, err := token.NewHMACKey("", make([]byte, 31)); err == nil {
		t.Error("short secret accepted")
	}
	// A private key carrying a wrong public half is rebuilt from its seed.
	good := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	bad := bytes.Clone(good)
	bad[40] ^= 1
	k1, err := token.NewEd25519Key("", bad)
	if err != nil || k1.ID() != edKey(t, 1).ID() {
		t.Errorf("key with a corrupt public half: %v, %v", k1, err)
	}

	// The key copies its material, so the caller's slice may be reused.
	secret := bytes.Repeat([]byte{5}, 32)
	k, err := token.NewHMACKey("k", secret)
	if err != nil {
		t.Fatal(err)
	}
	s := mustSigner(t, k, newClock(t0))
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{k}, Audience: "a", Now: newClock(t0).Now})
	tok := mustIssue(t, s, "a", 0)
	clear(secret)
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("key changed with the caller's slice: %v", err)
	}
}

func TestLoadKeyFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	path := filepath.Join(dir, "k.pub")
	if err := os.WriteFile(path, pemOf(t, pub), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := token.LoadKeyFile(path, "")
	if err != nil || k.Alg() != token.EdDSA {
		t.Fatalf("LoadKeyFile: %v, %v", k, err)
	}
	_, err = token.LoadKeyFile(filepath.Join(dir, "missing"), "")
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing file: %v", err)
	}
	bad := filepath.Join(dir, "bad")
	if err := os.WriteFile(bad, []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := token.LoadKeyFile(bad, ""); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("bad file: error should name the file: %v", err)
	}
}

// TestKeyMaterialNeverPrinted formats keys, and structs holding them, every
// way a log line might, and looks for the material in every encoding.
func TestKeyMaterialNeverPrinted(t *testing.T) {
	t.Parallel()
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	secret := make([]byte, 32)
	rand.Read(secret)
	edPriv, err := token.NewEd25519Key("", priv)
	if err != nil {
		t.Fatal(err)
	}
	hk, err := token.NewHMACKey("", secret)
	if err != nil {
		t.Fatal(err)
	}
	signer := mustSigner(t, edPriv, newClock(t0))
	hsigner := mustSigner(t, hk, newClock(t0))
	verifier := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{edPriv, hk}, Audience: "a"})

	var outputs []string
	for _, v := range []any{edPriv, edPriv.Public(), hk, &hk, signer, hsigner, verifier, []token.Key{edPriv, hk}, struct{ K token.Key }{hk}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
			outputs = append(outputs, fmt.Sprintf(verb, v))
		}
	}
	var logged bytes.Buffer
	slog.New(slog.NewJSONHandler(&logged, nil)).Info("keys", "ed", edPriv, "hmac", hk)
	outputs = append(outputs, logged.String())
	if !strings.Contains(logged.String(), hk.ID()) {
		t.Errorf("slog output should show the kid: %s", logged.String())
	}
	// Errors from parsing a secret that is too short must not echo it.
	short := base64.RawURLEncoding.EncodeToString(secret[:20])
	_, err = token.ParseKey([]byte(short), "")
	outputs = append(outputs, err.Error())
	_, err = token.ParseKey([]byte(short+"!"), "")
	outputs = append(outputs, err.Error())

	for _, m := range [][]byte{priv.Seed(), priv[32:], secret, secret[:20]} {
		forms := []string{
			string(m),
			hex.EncodeToString(m), strings.ToUpper(hex.EncodeToString(m)),
			base64.StdEncoding.EncodeToString(m)[:20], base64.RawURLEncoding.EncodeToString(m)[:20],
			strings.Trim(fmt.Sprint(m[:8]), "[]"),
		}
		for _, out := range outputs {
			for _, f := range forms {
				if strings.Contains(out, f) {
					t.Fatalf("key material %q leaked in %q", f, out)
				}
			}
		}
	}
}

// FuzzParseKey: ParseKey must never panic, and whatever it accepts must
// format without its material.
func FuzzParseKey(f *testing.F) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	f.Add(pemOf(f, priv))
	f.Add(pemOf(f, pub))
	f.Add([]byte(base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32))))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := token.ParseKey(data, "")
		if err != nil {
			return
		}
		if k.IsZero() || k.ID() == "" {
			t.Fatalf("accepted key without identity: %v", k)
		}
		if s := fmt.Sprintf("%#v", k); !strings.HasPrefix(s, "token.Key{kid=") {
			t.Fatalf("unexpected format %q", s)
		}
	})
}
