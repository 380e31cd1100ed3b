package caddymodule

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	dto "github.com/prometheus/client_model/go"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func TestAssignCaddyfile(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		input string
		want  AssignConfig
		err   string
	}{
		{
			name: "every option",
			input: `ws_balancer {
				mode assign
				backends 127.0.0.1:1
				token_key {env.WSB_KEY}
				token_kid k1
				token_ttl 20s
				response json
				subject {http.auth.user.id}
				assign_hold 3s
				selection two_choices
			}`,
			want: AssignConfig{
				TokenKey: "{env.WSB_KEY}", TokenKID: "k1", TokenTTL: caddy.Duration(20 * time.Second), Response: "json",
				Subject: "{http.auth.user.id}", Hold: caddy.Duration(3 * time.Second), Selection: "two_choices",
			},
		},
		{
			name:  "options before mode",
			input: "ws_balancer {\n token_key /k\n mode assign\n}",
			want:  AssignConfig{TokenKey: "/k"},
		},
		{name: "bad response", input: "ws_balancer {\n response html\n}", err: `response "html" is not auto, redirect or json`},
		{name: "bad selection", input: "ws_balancer {\n selection random\n}", err: `selection "random"`},
		{name: "key without value", input: "ws_balancer {\n token_key\n}", err: "wrong argument count"},
		{name: "two keys", input: "ws_balancer {\n token_key a b\n}", err: "wrong argument count"},
		{name: "key twice", input: "ws_balancer {\n token_key a\n token_key b\n}", err: `option "token_key" given twice`},
		{name: "bad ttl", input: "ws_balancer {\n token_ttl soon\n}", err: "not a valid duration"},
		{name: "negative hold", input: "ws_balancer {\n assign_hold -1s\n}", err: "not a valid duration"},
		{name: "still unknown", input: "ws_balancer {\n token_colour blue\n}", err: `unrecognized subdirective "token_colour"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			if h.Mode != modeAssign || h.Assign == nil || *h.Assign != tc.want {
				t.Fatalf("mode %q, assign %+v; want assign, %+v", h.Mode, h.Assign, tc.want)
			}
		})
	}
}

func TestAssignValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		h    Handler
		err  string
	}{
		{"no key", Handler{Mode: modeAssign, Backends: []string{"h:1"}}, "needs token_key"},
		{"no key, empty block", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{}}, "needs token_key"},
		{"assign options in proxy mode", Handler{Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k"}, Mode: modeProxy}, "need mode assign"},
		{"ttl too long", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k", TokenTTL: caddy.Duration(time.Hour)}}, "token_ttl must be between"},
		{"hold too long", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k", Hold: caddy.Duration(time.Hour)}}, "assign_hold must be between"},
		{"bad response", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k", Response: "xml"}}, `response "xml"`},
		{"bad selection", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k", Selection: "first"}}, `selection "first"`},
		{"ok", Handler{Mode: modeAssign, Backends: []string{"h:1"}, Assign: &AssignConfig{TokenKey: "k"}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.h.Validate()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// The key comes from a file, or from a placeholder holding the key or a
// path; errors never show the key.
func TestLoadSigningKey(t *testing.T) {
	key := harness.WriteSigningKey(t)
	path, pub := key.Path, key.Pub
	pemText, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	secret := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	hmacPath := filepath.Join(t.TempDir(), "hmac.key")
	if err := os.WriteFile(hmacPath, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WSB_TEST_PEM", string(pemText))
	t.Setenv("WSB_TEST_SECRET", secret)
	t.Setenv("WSB_TEST_PATH", path)
	t.Setenv("WSB_TEST_DIR", filepath.Dir(path))
	t.Setenv("WSB_TEST_SHORT", "c2hvcnRzZWNyZXQ=") // "shortsecret"

	for _, tc := range []struct {
		spec string
		kid0 string // token_kid
		alg  token.Alg
		kid  string
		err  string
	}{
		{spec: path, alg: token.EdDSA, kid: pub.ID()},
		{spec: hmacPath, alg: token.HS256},
		{spec: path, kid0: "rotation-2", alg: token.EdDSA, kid: "rotation-2"},
		{spec: path, kid0: "bad kid", err: "kid"},
		{spec: "{env.WSB_TEST_PEM}", alg: token.EdDSA, kid: pub.ID()},
		{spec: "{env.WSB_TEST_SECRET}", alg: token.HS256},
		{spec: "{env.WSB_TEST_PATH}", alg: token.EdDSA, kid: pub.ID()},
		{spec: "{env.WSB_TEST_DIR}/assign.key", alg: token.EdDSA, kid: pub.ID()},
		{spec: "{file." + path + "}", alg: token.EdDSA, kid: pub.ID()},
		{spec: "{env.WSB_TEST_UNSET}", err: "is empty"},
		{spec: "{env.WSB_TEST_SHORT}", err: "at least 32 bytes"},
		{spec: filepath.Join(t.TempDir(), "missing"), err: "no such file"},
		{spec: secret, err: "reading the key file"}, // inline: refused, and not repeated
	} {
		t.Run(tc.spec, func(t *testing.T) {
			k, err := loadSigningKey(tc.spec, tc.kid0)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				for _, material := range []string{"c2hvcnRzZWNyZXQ", "shortsecret", secret, "PRIVATE KEY"} {
					if strings.Contains(err.Error(), material) {
						t.Fatalf("error shows key material: %v", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !k.CanSign() || k.Alg() != tc.alg || (tc.kid != "" && k.ID() != tc.kid) {
				t.Fatalf("key %v, want a signing %s key with kid %q", k, tc.alg, tc.kid)
			}
		})
	}
}

func TestAcceptsJSON(t *testing.T) {
	t.Parallel()
	for accept, want := range map[string]bool{
		"":                                  false,
		"text/html":                         false,
		"application/json":                  true,
		"Application/JSON; charset=utf-8":   true,
		"text/html, application/json;q=0.9": true,
		"application/json;q=0":              false,
		"application/json; q=0.0, */*":      false,
		"application/jsonp":                 false,
	} {
		r := httptest.NewRequest(http.MethodGet, "/assign", nil)
		if accept != "" {
			r.Header.Set("Accept", accept)
		}
		if got := acceptsJSON(r); got != want {
			t.Errorf("acceptsJSON(%q) = %v, want %v", accept, got, want)
		}
	}
}

// provisionAssignHandler provisions an assign-mode handler over static
// backends; it is cleaned up with the test.
func provisionAssignHandler(t *testing.T, h *Handler) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Cleanup() })
	if err := h.Validate(); err != nil {
		t.Fatal(err)
	}
}

// assignRequest serves one request through h with a Caddy replacer in its
// context holding vars.
func assignRequest(t *testing.T, h *Handler, method, accept string, vars map[string]string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	r := httptest.NewRequest(method, "http://balancer.example/assign?next=ws://evil.example/", nil)
	if accept != "" {
		r.Header.Set("Accept", accept)
	}
	repl := caddyhttp.NewTestReplacer(r)
	for k, v := range vars {
		repl.Set(k, v)
	}
	w := httptest.NewRecorder()
	err := h.ServeHTTP(w, r, caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Fatal("assign mode called the next handler")
		return nil
	}))
	return w, err
}

func counterValue(t *testing.T, backend, outcome string) float64 {
	t.Helper()
	var m dto.Metric
	if err := assignments.WithLabelValues(backend, outcome).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestServeAssign(t *testing.T) {
	key := harness.WriteSigningKey(t)
	path, pub := key.Path, key.Pub
	h := &Handler{
		Mode:       modeAssign,
		Backends:   []string{"ws://127.0.0.71:9001/chat", "127.0.0.72:9002"},
		MaxConns:   2,
		RetryAfter: caddy.Duration(7 * time.Second),
		Assign:     &AssignConfig{TokenKey: path, TokenTTL: caddy.Duration(10 * time.Second), Subject: "{http.auth.user.id}"},
	}
	provisionAssignHandler(t, h)
	user := map[string]string{"http.auth.user.id": "alice"}
	verifiers := map[string]*token.Verifier{}
	for _, id := range []string{"127.0.0.71:9001", "127.0.0.72:9002"} {
		v, err := token.NewVerifier(token.VerifierOptions{Keys: []token.Key{pub}, Audience: id})
		if err != nil {
			t.Fatal(err)
		}
		verifiers[id] = v
	}
	okBefore := counterValue(t, "127.0.0.72:9002", "ok")

	// auto + JSON accepted: JSON.
	w, err := assignRequest(t, h, http.MethodGet, "application/json", user)
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("JSON assignment: %d %v", w.Code, err)
	}
	if ct, cc := w.Header().Get("Content-Type"), w.Header().Get("Cache-Control"); ct != "application/json" || cc != "no-store" {
		t.Errorf("Content-Type %q, Cache-Control %q", ct, cc)
	}
	var asg struct {
		URL, Token, Backend string
		ExpiresAt           time.Time `json:"expires_at"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &asg); err != nil {
		t.Fatalf("decoding %s: %v", w.Body, err)
	}
	if _, ok := verifiers[asg.Backend]; !ok || !strings.Contains(asg.URL, "token="+asg.Token) || time.Until(asg.ExpiresAt) > 11*time.Second {
		t.Fatalf("assignment %+v", asg)
	}
	c, err := verifiers[asg.Backend].Verify(asg.Token)
	if err != nil || c.Subject != "alice" {
		t.Fatalf("claims %+v, %v; want subject alice", c, err)
	}

	// auto without JSON: a redirect to the registered URL, whatever the
	// request's query says.
	w, err = assignRequest(t, h, http.MethodPost, "text/html", user)
	if err != nil || w.Code != http.StatusTemporaryRedirect {
		t.Fatalf("redirect assignment: %d %v", w.Code, err)
	}
	loc, err := url.Parse(w.Header().Get("Location"))
	if err != nil || loc.Scheme != "ws" || !strings.HasPrefix(loc.Host, "127.0.0.7") {
		t.Fatalf("Location %q", w.Header().Get("Location"))
	}
	if _, err := verifiers[loc.Host].Verify(loc.Query().Get("token")); err != nil {
		t.Fatalf("verifying the redirect's token: %v", err)
	}

	// No subject: refused.
	if _, err := assignRequest(t, h, http.MethodGet, "", nil); caddyStatus(err) != http.StatusForbidden {
		t.Fatalf("without a user: %v, want 403", err)
	}
	// Wrong method.
	if w, err := assignRequest(t, h, http.MethodDelete, "", user); caddyStatus(err) != http.StatusMethodNotAllowed || w.Header().Get("Allow") == "" {
		t.Fatalf("DELETE: %v, want 405 with Allow", err)
	}
	// Two more fill both backends (max_conns 2 each); then 503.
	for range 2 {
		if _, err := assignRequest(t, h, http.MethodGet, "", user); err != nil {
			t.Fatal(err)
		}
	}
	w, err = assignRequest(t, h, http.MethodGet, "", user)
	if caddyStatus(err) != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "7" {
		t.Fatalf("full: %v, Retry-After %q; want 503 with Retry-After 7", err, w.Header().Get("Retry-After"))
	}
	if got := counterValue(t, "127.0.0.72:9002", "ok") - okBefore; got != 2 {
		t.Errorf("assignments_total{backend=127.0.0.72:9002,outcome=ok} grew by %v, want 2", got)
	}
	if counterValue(t, "", "unavailable") < 1 || counterValue(t, "", outcomeNoSubject) < 1 {
		t.Error("unavailable and no_subject outcomes not counted")
	}
}

func TestServeAssignResponseModes(t *testing.T) {
	path := harness.WriteSigningKey(t).Path
	for _, tc := range []struct {
		response, accept string
		want             int
	}{
		{"redirect", "application/json", http.StatusTemporaryRedirect},
		{"json", "text/html", http.StatusOK},
		{"auto", "", http.StatusTemporaryRedirect},
		{"", "application/json", http.StatusOK},
	} {
		h := &Handler{Mode: modeAssign, Backends: []string{"127.0.0.73:1"}, Assign: &AssignConfig{TokenKey: path, Response: tc.response}}
		provisionAssignHandler(t, h)
		w, err := assignRequest(t, h, http.MethodGet, tc.accept, nil)
		if err != nil || w.Code != tc.want {
			t.Errorf("response %q, Accept %q: %d %v; want %d", tc.response, tc.accept, w.Code, err, tc.want)
		}
	}
}

func caddyStatus(err error) int {
	if he, ok := err.(caddyhttp.HandlerError); ok {
		return he.StatusCode
	}
	return 0
}
