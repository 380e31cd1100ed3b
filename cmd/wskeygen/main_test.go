package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func runOK(t *testing.T, args ...string) (stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	if err := run(args, &o, &e); err != nil {
		t.Fatalf("run %q: %v (stderr %s)", args, err, e.String())
	}
	return o.String(), e.String()
}

func TestEd25519Files(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "keys") // created by wskeygen
	out, _ := runOK(t, "-type", "ed25519", "-out", dir)

	matches, _ := filepath.Glob(filepath.Join(dir, "*"))
	if len(matches) != 2 {
		t.Fatalf("files %v, want a .key and a .pub", matches)
	}
	keyPath := findExt(t, matches, ".key")
	pubPath := findExt(t, matches, ".pub")
	kid := strings.TrimSuffix(filepath.Base(keyPath), ".key")

	assertMode(t, dir, 0o700)
	assertMode(t, keyPath, 0o600)
	assertMode(t, pubPath, 0o644)

	priv, err := token.LoadKeyFile(keyPath, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, err := token.LoadKeyFile(pubPath, "")
	if err != nil {
		t.Fatal(err)
	}
	// The derived kid matches the file name, so loading needs no -kid.
	if priv.ID() != kid || pub.ID() != kid || !priv.CanSign() || pub.CanSign() {
		t.Fatalf("loaded %v and %v from %s", priv, pub, kid)
	}
	assertPairWorks(t, priv, pub)

	keyPEM, _ := os.ReadFile(keyPath)
	if strings.Contains(out, string(keyPEM[30:60])) || strings.Contains(out, "PRIVATE KEY-----") {
		t.Fatalf("private key printed: %s", out)
	}
	for _, want := range []string{"kid: " + kid, keyPath, pubPath, "balancer only"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
}

func TestHMACFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, _ := runOK(t, "-type", "hmac", "-out", dir, "-kid", "2025-01")
	path := filepath.Join(dir, "2025-01.secret")
	assertMode(t, path, 0o600)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(strings.TrimSpace(string(data))) != 43 { // 32 bytes, base64url unpadded
		t.Fatalf("secret file %q", data)
	}
	if strings.Contains(out, strings.TrimSpace(string(data))) {
		t.Fatal("secret printed")
	}
	if !strings.Contains(out, `"2025-01"`) {
		t.Errorf("summary should tell to pass the custom kid:\n%s", out)
	}
	k, err := token.LoadKeyFile(path, "2025-01")
	if err != nil || k.Alg() != token.HS256 {
		t.Fatalf("LoadKeyFile: %v %v", k, err)
	}
	assertPairWorks(t, k, k)
}

func TestStdout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	out, errOut := runOK(t, "-type", "ed25519", "-out", dir, "-stdout")
	if !strings.Contains(out, "-----BEGIN PRIVATE KEY-----") || !strings.Contains(out, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("stdout:\n%s", out)
	}
	if !strings.Contains(errOut, "nothing written") {
		t.Errorf("stderr: %s", errOut)
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Fatalf("-stdout wrote files: %v", entries)
	}
	out, _ = runOK(t, "-type", "hmac", "-stdout")
	if _, err := token.ParseKey([]byte(out), ""); err != nil {
		t.Fatalf("printed secret does not parse: %v", err)
	}
}

func TestNeverOverwrites(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	runOK(t, "-type", "ed25519", "-out", dir, "-kid", "k1")
	before, _ := os.ReadFile(filepath.Join(dir, "k1.key"))

	var o, e bytes.Buffer
	err := run([]string{"-type", "ed25519", "-out", dir, "-kid", "k1"}, &o, &e)
	if err == nil || !strings.Contains(err.Error(), "already exists") {
		t.Fatalf("second run: %v", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "k1.key"))
	if !bytes.Equal(before, after) {
		t.Fatal("existing key overwritten")
	}

	// Only the .pub exists: the new .key is written, the .pub refused, and
	// the new .key removed again so no mismatched pair is left.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, "k2.pub"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run([]string{"-out", dir2, "-kid", "k2"}, &o, &e); err == nil {
		t.Fatal("overwrote k2.pub")
	}
	if _, err := os.Stat(filepath.Join(dir2, "k2.key")); !os.IsNotExist(err) {
		t.Fatalf("half pair left behind: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir2, "k2.pub")); string(b) != "old" {
		t.Fatal("existing file removed")
	}
}

func TestBadArguments(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"-type", "rsa"},
		{"-kid", "../escape"},
		{"-kid", "a b"},
		{"-kid", strings.Repeat("k", 65)},
		{"extra"},
		{"-nosuchflag"},
	} {
		dir := t.TempDir()
		var o, e bytes.Buffer
		if err := run(append(args, "-out", dir), &o, &e); err == nil {
			t.Errorf("run %q succeeded", args)
		}
		if entries, _ := os.ReadDir(dir); len(entries) != 0 {
			t.Errorf("run %q wrote %v", args, entries)
		}
	}
}

func findExt(t *testing.T, paths []string, ext string) string {
	t.Helper()
	for _, p := range paths {
		if filepath.Ext(p) == ext {
			return p
		}
	}
	t.Fatalf("no %s file in %v", ext, paths)
	return ""
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s has mode %#o, want %#o", path, got, want)
	}
}

// assertPairWorks signs with one key and verifies with the other.
func assertPairWorks(t *testing.T, signKey, verifyKey token.Key) {
	t.Helper()
	s, err := token.NewSigner(signKey, nil)
	if err != nil {
		t.Fatal(err)
	}
	v, err := token.NewVerifier(token.VerifierOptions{Keys: []token.Key{verifyKey}, Audience: "b"})
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := s.Issue("b", "", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("key pair does not verify: %v", err)
	}
}
