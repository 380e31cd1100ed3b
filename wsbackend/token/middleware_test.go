package token_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func TestMiddleware(t *testing.T) {
	t.Parallel()
	ed := edKey(t, 1)
	type req struct {
		query  string // raw query, "{tok}" replaced by the token
		bearer string // Authorization header, "{tok}" replaced
	}
	tests := []struct {
		name    string
		aud     string        // token audience; "" = backend-a
		advance time.Duration // clock moved before the request
		reqs    []req
		status  []int
		reason  []string // OnReject reasons, in order
	}{
		{"query param, then replay", "", 0,
			[]req{{query: "token={tok}"}, {query: "token={tok}"}},
			[]int{200, 403}, []string{token.ReasonReplayed}},
		{"bearer header", "", 0,
			[]req{{bearer: "Bearer {tok}"}},
			[]int{200}, nil},
		{"bearer scheme is case-insensitive", "", 0,
			[]req{{bearer: "bearer {tok}"}},
			[]int{200}, nil},
		{"missing", "", 0,
			[]req{{query: "other=1"}},
			[]int{401}, []string{token.ReasonMissing}},
		{"basic auth is not a token", "", 0,
			[]req{{bearer: "Basic dXNlcjpwYXNz"}},
			[]int{401}, []string{token.ReasonMissing}},
		{"empty bearer", "", 0,
			[]req{{bearer: "Bearer "}},
			[]int{401}, []string{token.ReasonMalformed}},
		{"both query and bearer", "", 0,
			[]req{{query: "token={tok}", bearer: "Bearer {tok}"}},
			[]int{401}, []string{token.ReasonMalformed}},
		{"query param twice", "", 0,
			[]req{{query: "token={tok}&token={tok}"}},
			[]int{401}, []string{token.ReasonMalformed}},
		{"garbage", "", 0,
			[]req{{query: "token=abc"}},
			[]int{401}, []string{token.ReasonMalformed}},
		{"expired", "", time.Minute,
			[]req{{query: "token={tok}"}},
			[]int{401}, []string{token.ReasonExpired}},
		{"not yet valid", "", -time.Minute,
			[]req{{query: "token={tok}"}},
			[]int{401}, []string{token.ReasonNotYetValid}},
		{"wrong audience", "backend-b", 0,
			[]req{{query: "token={tok}"}},
			[]int{403}, []string{token.ReasonWrongAudience}},
		{"forged", "", 0,
			[]req{{query: "token={tok}A"}}, // still canonical base64url: 65-byte signature
			[]int{401}, []string{token.ReasonBadSignature}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock(t0)
			v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "backend-a", Now: c.Now})
			aud := tt.aud
			if aud == "" {
				aud = "backend-a"
			}
			tok := mustIssue(t, mustSigner(t, ed, c), aud, 0)
			c.Advance(tt.advance)

			var reasons []string
			h := token.Middleware(v, token.MiddlewareOptions{
				OnReject: func(r *http.Request, reason string) { reasons = append(reasons, reason) },
			})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				claims, ok := token.ClaimsFromContext(r.Context())
				if !ok || claims.Audience != "backend-a" {
					t.Errorf("handler without claims: %+v", claims)
				}
				w.WriteHeader(http.StatusOK)
			}))
			for i, rq := range tt.reqs {
				r := httptest.NewRequest(http.MethodGet, "/ws?"+strings.ReplaceAll(rq.query, "{tok}", tok), nil)
				if rq.bearer != "" {
					r.Header.Set("Authorization", strings.ReplaceAll(rq.bearer, "{tok}", tok))
				}
				w := httptest.NewRecorder()
				h.ServeHTTP(w, r)
				if w.Code != tt.status[i] {
					t.Fatalf("request %d: status %d, want %d (%s)", i, w.Code, tt.status[i], w.Body)
				}
				if w.Code == http.StatusOK {
					continue
				}
				body := w.Body.String()
				want := reasons[len(reasons)-1]
				if body != "token rejected: "+want+"\n" {
					t.Errorf("body %q, want the reason %q", body, want)
				}
				if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
					t.Errorf("Content-Type %q", ct)
				}
				if auth := w.Header().Get("WWW-Authenticate"); (w.Code == 401) != strings.HasPrefix(auth, "Bearer") {
					t.Errorf("WWW-Authenticate %q with status %d", auth, w.Code)
				}
				if strings.Contains(body, tok[:20]) {
					t.Error("response echoes the token")
				}
			}
			if fmt.Sprint(reasons) != fmt.Sprint(tt.reason) {
				t.Errorf("OnReject reasons %v, want %v", reasons, tt.reason)
			}
		})
	}
}

func TestMiddlewareReplayCacheFull(t *testing.T) {
	t.Parallel()
	c := newClock(t0)
	ed := edKey(t, 1)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Now: c.Now, Replay: token.NewReplayCache(1)})
	s := mustSigner(t, ed, c)
	h := token.Middleware(v, token.MiddlewareOptions{})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	for i, want := range []int{200, 503} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/?token="+mustIssue(t, s, "a", 0), nil))
		if w.Code != want {
			t.Fatalf("request %d: %d, want %d", i, w.Code, want)
		}
		if want == 503 && (w.Header().Get("Retry-After") == "" || w.Body.String() != "token rejected: replay_cache_full\n") {
			t.Fatalf("503 without Retry-After or reason: %v %q", w.Header(), w.Body)
		}
	}
}

// TestMiddlewareStripsToken: the next handler (and whatever it logs) sees the
// request without the token, other parameters untouched; with KeepToken it
// sees it unchanged.
func TestMiddlewareStripsToken(t *testing.T) {
	t.Parallel()
	ed := edKey(t, 1)
	tests := []struct {
		name      string
		opts      token.MiddlewareOptions
		query     string // "{tok}" replaced
		bearer    bool
		wantQuery string
		wantAuth  bool
	}{
		{"query", token.MiddlewareOptions{}, "b=2&token={tok}&a=1&a=0", false, "b=2&a=1&a=0", false},
		{"only the token", token.MiddlewareOptions{}, "token={tok}", false, "", false},
		{"custom param", token.MiddlewareOptions{QueryParam: "t"}, "token=keep&t={tok}", false, "token=keep", false},
		{"encoded param name", token.MiddlewareOptions{}, "%74oken={tok}&x=%20", false, "x=%20", false},
		{"bearer", token.MiddlewareOptions{}, "x=1", true, "x=1", false},
		{"keep", token.MiddlewareOptions{KeepToken: true}, "token={tok}&x=1", false, "token={tok}&x=1", false},
		{"keep bearer", token.MiddlewareOptions{KeepToken: true}, "x=1", true, "x=1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			c := newClock(t0)
			v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Now: c.Now})
			tok := mustIssue(t, mustSigner(t, ed, c), "a", 0)
			var got *http.Request
			h := token.Middleware(v, tt.opts)(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { got = r }))
			target := "/ws?" + strings.ReplaceAll(tt.query, "{tok}", tok)
			r := httptest.NewRequest(http.MethodGet, target, nil)
			if tt.bearer {
				r.Header.Set("Authorization", "Bearer "+tok)
			}
			w := httptest.NewRecorder()
			h.ServeHTTP(w, r)
			if got == nil {
				t.Fatalf("next not called: %d %s", w.Code, w.Body)
			}
			wantQuery := strings.ReplaceAll(tt.wantQuery, "{tok}", tok)
			if got.URL.RawQuery != wantQuery {
				t.Errorf("next saw query %q, want %q", got.URL.RawQuery, wantQuery)
			}
			wantURI := "/ws"
			if wantQuery != "" {
				wantURI += "?" + wantQuery
			}
			if got.RequestURI != wantURI {
				t.Errorf("next saw RequestURI %q, want %q", got.RequestURI, wantURI)
			}
			if (got.Header.Get("Authorization") != "") != tt.wantAuth {
				t.Errorf("Authorization header %q", got.Header.Get("Authorization"))
			}
			// The caller's request is never modified.
			if r.RequestURI != target {
				t.Errorf("original request changed: %q", r.RequestURI)
			}
		})
	}
}

func TestClaimsFromContext(t *testing.T) {
	t.Parallel()
	if _, ok := token.ClaimsFromContext(context.Background()); ok {
		t.Fatal("claims from an empty context")
	}
	if _, ok := token.ClaimsFromContext(token.NewContext(context.Background(), nil)); ok {
		t.Fatal("nil claims reported as present")
	}
	want := &token.Claims{Audience: "a"}
	if got, ok := token.ClaimsFromContext(token.NewContext(context.Background(), want)); !ok || got != want {
		t.Fatal("claims lost")
	}
}

// TestMiddlewareConcurrentServer runs real HTTP requests in parallel through
// a server: every token is accepted once and replays get 403. Run with -race.
func TestMiddlewareConcurrentServer(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ed := edKey(t, 1)
	c := newClock(t0)
	v := mustVerifier(t, token.VerifierOptions{Keys: []token.Key{ed}, Audience: "a", Now: c.Now})
	s := mustSigner(t, ed, c)
	var mu sync.Mutex
	rejected := map[string]int{}
	srv := httptest.NewServer(token.Middleware(v, token.MiddlewareOptions{
		OnReject: func(_ *http.Request, reason string) { mu.Lock(); rejected[reason]++; mu.Unlock() },
	})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := token.ClaimsFromContext(r.Context())
		io.WriteString(w, claims.ID)
	})))
	defer srv.Close()

	const n, tries = 50, 3
	toks := make([]string, n)
	for i := range toks {
		toks[i] = mustIssue(t, s, "a", 0)
	}
	var wg sync.WaitGroup
	statuses := make(chan int, n*tries)
	for i := 0; i < n*tries; i++ {
		wg.Add(1)
		go func(tok string) {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/?token="+url.QueryEscape(tok), nil)
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses <- resp.StatusCode
		}(toks[i%n])
	}
	wg.Wait()
	close(statuses)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[200] != n || count[403] != n*(tries-1) || rejected[token.ReasonReplayed] != n*(tries-1) {
		t.Fatalf("statuses %v, rejections %v", count, rejected)
	}
}

// ExampleMiddleware protects a WebSocket endpoint on a backend: the token is
// checked before the handler upgrades the connection.
func ExampleMiddleware() {
	pub, err := token.LoadKeyFile("keys/AbCdEfGhIjK.pub", "") // written by wskeygen
	if err != nil {
		log.Fatal(err)
	}
	verifier, err := token.NewVerifier(token.VerifierOptions{
		Keys:     []token.Key{pub},
		Audience: "backend-7", // this backend's ID, as registered with the balancer
	})
	if err != nil {
		log.Fatal(err)
	}
	ws := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		claims, _ := token.ClaimsFromContext(r.Context())
		_ = claims.Subject // who is connecting
		// ... websocket.Accept(w, r, nil) and serve ...
	})
	http.Handle("/ws", token.Middleware(verifier, token.MiddlewareOptions{
		OnReject: func(r *http.Request, reason string) {
			// count rejections by reason: metrics.WithLabelValues(reason).Inc()
		},
	})(ws))
	log.Fatal(http.ListenAndServe(":8443", nil))
}
