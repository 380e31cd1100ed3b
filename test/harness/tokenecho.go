package harness

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// TokenEchoOptions shape a TokenEcho.
type TokenEchoOptions struct {
	// Keys verify the tokens. Required.
	Keys []token.Key
	// ID is the backend's ID, the tokens' audience. Default: its
	// host:port, which is how ws_balancer names static backends.
	ID string
	// Path is where the WebSocket endpoint is; default /ws.
	Path string
	// Consul, if set, registers the backend as an instance of Service with
	// wsbackend.Register, publishing its live count and its public URL
	// (ws://host:port/path) in the service meta.
	Consul  *api.Client
	Service string
	// CheckOrigin is the upgrader's origin check; nil allows any origin.
	CheckOrigin func(*http.Request) bool
}

// TokenEcho is an echo backend for assign mode, built the way a real
// backend is: token.Middleware (with a token.RejectCounter) in front of a
// wsbackend.Counter in front of a gorilla/websocket echo handler, optionally
// registered in Consul with wsbackend.Register.
type TokenEcho struct {
	Addr string // host:port
	ID   string // the tokens' audience
	URL  string // ws://host:port/path: the public URL

	Counter  wsbackend.Counter
	Verifier *token.Verifier
	Rejects  token.RejectCounter
	Reg      *wsbackend.Registration

	t     testing.TB
	srv   *http.Server
	skew  atomic.Int64
	ended atomic.Bool

	mu       sync.Mutex
	subjects []string
	rejected []string
}

// StartTokenEcho starts a TokenEcho, stopped by t.Cleanup.
func StartTokenEcho(t testing.TB, opts TokenEchoOptions) *TokenEcho {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if opts.Path == "" {
		opts.Path = "/ws"
	}
	e := &TokenEcho{Addr: ln.Addr().String(), ID: opts.ID, t: t}
	if e.ID == "" {
		e.ID = e.Addr
	}
	e.URL = "ws://" + e.Addr + opts.Path
	e.Verifier, err = token.NewVerifier(token.VerifierOptions{
		Keys:     opts.Keys,
		Audience: e.ID,
		Now:      func() time.Time { return time.Now().Add(time.Duration(e.skew.Load())) },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Rejects.Next = func(r *http.Request, reason string) {
		e.mu.Lock()
		e.rejected = append(e.rejected, reason)
		e.mu.Unlock()
		if !e.ended.Load() {
			t.Logf("backend %s rejected a token: %s (%s)", e.ID, reason, r.RemoteAddr)
		}
	}
	up := websocket.Upgrader{CheckOrigin: opts.CheckOrigin}
	if up.CheckOrigin == nil {
		up.CheckOrigin = func(*http.Request) bool { return true }
	}
	echo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := token.ClaimsFromContext(r.Context())
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		e.mu.Lock()
		e.subjects = append(e.subjects, claims.Subject)
		e.mu.Unlock()
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})
	mux := http.NewServeMux()
	mux.Handle(opts.Path, token.Middleware(e.Verifier, token.MiddlewareOptions{OnReject: e.Rejects.OnReject})(e.Counter.Wrap(echo)))
	e.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go e.srv.Serve(ln)
	t.Cleanup(e.stop)

	if opts.Consul != nil {
		_, p, _ := net.SplitHostPort(e.Addr)
		port, _ := strconv.Atoi(p)
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		e.Reg, err = wsbackend.Register(ctx, wsbackend.RegistrationOptions{
			Client:    opts.Consul,
			Service:   opts.Service,
			ID:        e.ID,
			Address:   "127.0.0.1",
			Port:      port,
			PublicURL: e.URL,
			Counter:   &e.Counter,
		})
		if err != nil {
			t.Fatalf("registering backend %s: %v", e.ID, err)
		}
		t.Cleanup(func() {
			dctx, dcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer dcancel()
			_ = e.Reg.Deregister(dctx)
		})
	}
	return e
}

func (e *TokenEcho) stop() {
	e.ended.Store(true)
	e.srv.Close()
}

// SetSkew sets the verifier's clock to run d ahead of the real one.
func (e *TokenEcho) SetSkew(d time.Duration) { e.skew.Store(int64(d)) }

// SetKeys replaces the verifier's keys (rotation).
func (e *TokenEcho) SetKeys(keys ...token.Key) error { return e.Verifier.SetKeys(keys...) }

// Live is the number of connections the backend holds.
func (e *TokenEcho) Live() int64 { return e.Counter.Live() }

// Subjects returns the sub claim of each accepted connection, in order.
func (e *TokenEcho) Subjects() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.subjects...)
}

// Rejected returns the reason of each rejection, in order.
func (e *TokenEcho) Rejected() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.rejected...)
}

// SigningKey is an assign-mode key file, as cmd/wskeygen writes it, with
// its two halves.
type SigningKey struct {
	Path string // PKCS#8 PEM Ed25519 private key
	Priv ed25519.PrivateKey
	Pub  token.Key // the verification key, kid derived
}

// WritePublicKey writes k's public key as a PKIX PEM file, as backends hold
// it, and returns its path.
func (k SigningKey) WritePublicKey(t testing.TB) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(k.Priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "assign.pub")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// WriteSigningKey writes a fresh Ed25519 signing key into a temporary
// directory of t.
func WriteSigningKey(t testing.TB) SigningKey {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(sk)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "assign.key")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err := token.NewEd25519PublicKey("", pk)
	if err != nil {
		t.Fatal(err)
	}
	return SigningKey{Path: path, Priv: sk, Pub: pub}
}
