// Command wskeygen makes keys for assign-mode tokens (package
// wsbackend/token).
//
//	go run ./cmd/wskeygen -type ed25519 -out keys/
//	go run ./cmd/wskeygen -type hmac -out keys/
//
// For Ed25519 it writes <kid>.key (PKCS#8 PEM private key, mode 0600, for the
// balancer only) and <kid>.pub (PKIX PEM public key, for every backend). For
// HMAC it writes <kid>.secret (32 random bytes, base64url, mode 0600, shared
// by the balancer and every backend). The kid is derived from the key, as
// token.ParseKey derives it, unless -kid is given. Existing files are never
// overwritten.
//
// Private material goes only into files; with -stdout it is printed instead
// and nothing is written. The summary goes to standard output otherwise, and
// errors to standard error.
package main

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func main() {
	err := run(os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "wskeygen:", err)
		os.Exit(1)
	}
}

// keyFile is one file to write.
type keyFile struct {
	name    string // base name, <kid>.<ext>
	data    []byte
	mode    os.FileMode
	private bool
	what    string
}

// run is main without the process: testable, and it returns errors rather
// than exiting.
func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("wskeygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	typ := fs.String("type", "ed25519", "key type: ed25519 (recommended) or hmac")
	out := fs.String("out", ".", "directory to write the key files to (created with mode 0700 if missing)")
	kid := fs.String("kid", "", "key ID; default: derived from the key (first 8 bytes of its SHA-256, base64url)")
	toStdout := fs.Bool("stdout", false, "print the key material to standard output instead of writing files")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: wskeygen [-type ed25519|hmac] [-out dir] [-kid id] [-stdout]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	var (
		key   token.Key
		files []keyFile
		err   error
	)
	switch *typ {
	case "ed25519":
		key, files, err = newEd25519(*kid)
	case "hmac":
		key, files, err = newHMAC(*kid)
	default:
		return fmt.Errorf("unknown -type %q (want ed25519 or hmac)", *typ)
	}
	if err != nil {
		return err
	}

	if *toStdout {
		for _, f := range files {
			if _, err := stdout.Write(f.data); err != nil {
				return err
			}
		}
		fmt.Fprintf(stderr, "kid: %s (%s); nothing written to disk\n", key.ID(), key.Alg())
		return nil
	}

	paths, err := writeFiles(*out, files)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "kid: %s (%s)\n", key.ID(), key.Alg())
	for i, f := range files {
		fmt.Fprintf(stdout, "wrote %s (%s, mode %#o)\n", paths[i], f.what, f.mode)
	}
	printUsage(stdout, key, paths, *kid != "")
	return nil
}

func newEd25519(kid string) (token.Key, []keyFile, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return token.Key{}, nil, fmt.Errorf("generating Ed25519 key: %w", err)
	}
	key, err := token.NewEd25519Key(kid, priv)
	if err != nil {
		return token.Key{}, nil, err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return token.Key{}, nil, fmt.Errorf("encoding private key: %w", err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return token.Key{}, nil, fmt.Errorf("encoding public key: %w", err)
	}
	files := []keyFile{
		{key.ID() + ".key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}), 0o600, true, "Ed25519 private key, PKCS#8 PEM"},
		{key.ID() + ".pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o644, false, "Ed25519 public key, PKIX PEM"},
	}
	return key, files, checkRoundTrip(key, files)
}

func newHMAC(kid string) (token.Key, []keyFile, error) {
	secret := make([]byte, token.MinHMACSecretLength)
	if _, err := rand.Read(secret); err != nil {
		return token.Key{}, nil, fmt.Errorf("generating secret: %w", err)
	}
	key, err := token.NewHMACKey(kid, secret)
	if err != nil {
		return token.Key{}, nil, err
	}
	text := base64.RawURLEncoding.EncodeToString(secret) + "\n"
	files := []keyFile{{key.ID() + ".secret", []byte(text), 0o600, true, "HMAC-SHA256 secret, 32 bytes base64url"}}
	return key, files, checkRoundTrip(key, files)
}

// checkRoundTrip parses what is about to be written the way the balancer and
// backends will, so a file that would not load is never written.
func checkRoundTrip(key token.Key, files []keyFile) error {
	for _, f := range files {
		k, err := token.ParseKey(f.data, key.ID())
		if err != nil {
			return fmt.Errorf("checking %s: %w", f.name, err)
		}
		if k.Alg() != key.Alg() || k.CanSign() != f.private {
			return fmt.Errorf("checking %s: parses as %v", f.name, k)
		}
	}
	return nil
}

// writeFiles creates dir if needed and writes every file, refusing to
// overwrite any. On failure it removes what it wrote, so a half key pair is
// never left behind.
func writeFiles(dir string, files []keyFile) (paths []string, err error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating %s: %w", dir, err)
	}
	defer func() {
		if err != nil {
			for _, p := range paths {
				os.Remove(p)
			}
			paths = nil
		}
	}()
	for _, f := range files {
		p := filepath.Join(dir, f.name)
		if err := writeNew(p, f.data, f.mode); err != nil {
			return paths, err
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// writeNew writes a file that must not exist yet, with its final mode from
// the start so private material is never readable by others, even briefly.
func writeNew(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; not overwriting it", path)
		}
		return fmt.Errorf("creating %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("closing %s: %w", path, cerr)
		}
		if err != nil {
			os.Remove(path)
		}
	}()
	// The umask may have narrowed the mode; make it exactly what we promise.
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("setting mode of %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}

func printUsage(w io.Writer, key token.Key, paths []string, customKID bool) {
	kidArg := `""`
	if customKID {
		kidArg = fmt.Sprintf("%q", key.ID())
	}
	fmt.Fprintln(w)
	if key.Alg() == token.EdDSA {
		fmt.Fprintf(w, "Balancer (signs):   token.LoadKeyFile(%q, %s) -> token.NewSigner\n", paths[0], kidArg)
		fmt.Fprintf(w, "Backends (verify):  token.LoadKeyFile(%q, %s) -> VerifierOptions.Keys\n", paths[1], kidArg)
		fmt.Fprintf(w, "Keep %s on the balancer only; copy %s to every backend.\n", paths[0], paths[1])
	} else {
		fmt.Fprintf(w, "Balancer and backends: token.LoadKeyFile(%q, %s)\n", paths[0], kidArg)
		fmt.Fprintf(w, "Copy %s over a secure channel. Anyone holding it can mint tokens, backends included; prefer -type ed25519.\n", paths[0])
	}
	if customKID {
		fmt.Fprintf(w, "The kid %q was given with -kid: pass it again when loading, or the kid is derived from the key.\n", key.ID())
	}
	fmt.Fprintln(w, "Rotation: add the new key to the backends' keys, switch the balancer to it, and remove the old key once its tokens have expired.")
}
