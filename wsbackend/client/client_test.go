package client

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// assignFixture is a backend behind token.Middleware and a balancer
// answering /assign with an Assigner over it, both on httptest servers.
type assignFixture struct {
	balancer *httptest.Server
	backend  *httptest.Server
	full     bool
}

func newAssignFixture(t *testing.T) *assignFixture {
	t.Helper()
	_, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	priv, err := token.NewEd25519Key("", sk)
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public()
	f := new(assignFixture)
	var verifier *token.Verifier
	f.backend = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		token.Middleware(verifier, token.MiddlewareOptions{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := (&websocket.Upgrader{}).Upgrade(w, r, nil)
			if err != nil {
				return
			}
			defer c.Close()
			claims, _ := token.ClaimsFromContext(r.Context())
			c.WriteMessage(websocket.TextMessage, []byte("hello "+claims.Subject))
		})).ServeHTTP(w, r)
	}))
	t.Cleanup(f.backend.Close)
	// The balancer side is the real Assigner, so that this test also checks
	// that what it answers is what the client reads.
	u, err := balancer.ParseBackendURL("ws" + strings.TrimPrefix(f.backend.URL, "http") + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	pool := new(balancer.Pool)
	pool.Set([]*balancer.Upstream{{Backend: balancer.NewBackend(u.Host), ID: u.Host, URL: u}})
	verifier, err = token.NewVerifier(token.VerifierOptions{Keys: []token.Key{pub}, Audience: u.Host})
	if err != nil {
		t.Fatal(err)
	}
	signer, err := token.NewSigner(priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := balancer.NewAssigner(pool, balancer.AssignOptions{Signer: signer, RetryAfter: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.balancer = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.full {
			w.Header().Set("Retry-After", "3")
			http.Error(w, "no backend available", http.StatusServiceUnavailable)
			return
		}
		asg, err := a.Assign(r.Header.Get("X-User"))
		if err != nil {
			t.Error(err)
			return
		}
		if r.URL.Path == "/redirect" {
			w.Header().Set("Location", asg.URL)
			w.WriteHeader(http.StatusTemporaryRedirect)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(asg)
	}))
	t.Cleanup(f.balancer.Close)
	return f
}

func TestAssignAndDial(t *testing.T) {
	t.Parallel()
	f := newAssignFixture(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	for _, path := range []string{"/json", "/redirect"} {
		c, asg, err := AssignAndDial(ctx, f.balancer.URL+path, &AssignDialOptions{Header: http.Header{"X-User": {"bob"}}})
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		_, msg, err := c.ReadMessage()
		c.Close()
		if err != nil || string(msg) != "hello bob" {
			t.Errorf("%s: got %q, %v", path, msg, err)
		}
		if asg.Backend == "" || asg.Token == "" || time.Until(asg.ExpiresAt) <= 0 {
			t.Errorf("%s: assignment %+v", path, asg)
		}
	}
	f.full = true
	_, _, err := AssignAndDial(ctx, f.balancer.URL+"/json", nil)
	var ae *AssignError
	if !errors.As(err, &ae) || ae.StatusCode != http.StatusServiceUnavailable || ae.RetryAfter != 3*time.Second {
		t.Fatalf("full: %v, want a 503 AssignError with RetryAfter 3s", err)
	}
}
