package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

// modeAssign answers each request with a backend's address and a token
// instead of relaying: clients then connect to the backend directly.
const modeAssign = "assign"

// Values of AssignConfig.Response.
const (
	responseAuto     = "auto"
	responseRedirect = "redirect"
	responseJSON     = "json"
)

// Values of AssignConfig.Selection.
const (
	selectionLeastLoaded = "least_loaded"
	selectionTwoChoices  = "two_choices"
)

// outcomeNoSubject is the outcome of a request refused because the subject
// placeholders came out empty.
const outcomeNoSubject = "no_subject"

// assignments counts assign-mode answers; it is incremented as they happen.
var assignments = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metricsNamespace,
	Subsystem: metricsSubsystem,
	Name:      "assignments_total",
	Help:      "Assignments (assign mode) by backend ID and outcome (ok, unavailable, failed, no_subject).",
}, []string{"backend", "outcome"})

func countAssignment(backend, outcome string) { assignments.WithLabelValues(backend, outcome).Inc() }

// AssignConfig configures assign mode (mode "assign"): each request, usually
// to a path such as /assign behind Caddy's authentication, gets the public
// WebSocket URL of the least-loaded backend with a signed, short-lived,
// single-use token bound to that backend, and the client connects to the
// backend directly. Backends verify the token (package wsbackend/token,
// Middleware) with the public half of the key.
//
// The answer is a 307 redirect to the URL, or JSON
// {"url","token","expires_at","backend"}. The URL is always a registered
// backend's: the ws_url its Consul registration publishes, else the backend
// address as configured (ws://host:port/path). Nothing in the request can
// change it.
//
// Key rotation: give the backends the new public key beside the old one,
// then point token_key at the new key and reload Caddy, wait for token_ttl
// plus the verifiers' leeway, and remove the old key from the backends.
type AssignConfig struct {
	// TokenKey is the key that signs tokens: the path of a key file, or a
	// placeholder such as {env.WSB_TOKEN_KEY} whose value is the key itself
	// (or the path of a file). The key is an Ed25519 private key as PKCS#8
	// PEM (algorithm EdDSA, recommended: backends hold only the public key)
	// or an HMAC secret of at least 32 bytes in base64 (HS256: every
	// backend can mint tokens), as cmd/wskeygen writes them. Its key ID
	// (kid) is derived from the key, as the verifiers derive it. Required.
	// The key is never logged; a placeholder keeps it out of the JSON
	// config too.
	TokenKey string `json:"token_key,omitempty"`

	// TokenKID is the key ID written in the tokens' header, for keys made
	// with an explicit kid (wskeygen -kid): the backends must know the key
	// under the same kid. Default: derived from the key, as the backends
	// derive it.
	TokenKID string `json:"token_kid,omitempty"`

	// TokenTTL is how long a token is valid: the client must connect
	// within it. Rounded up to whole seconds. Default 30s; at most 5m (the
	// verifiers' default MaxLifetime).
	TokenTTL caddy.Duration `json:"token_ttl,omitempty"`

	// Response is "redirect" (307 to the URL), "json", or "auto" (default):
	// JSON when the request's Accept header names application/json, else
	// the redirect.
	Response string `json:"response,omitempty"`

	// Subject binds the token to the client's identity: its value, with
	// the request's placeholders replaced, becomes the token's sub claim,
	// which the backend reads from the verified claims. Typically
	// {http.auth.user.id}, set by an authentication handler that runs
	// before this one. If it is set but comes out empty, the request is
	// refused with 403. Use only values the client cannot choose: a request
	// header placeholder would let it name any subject. Default: no
	// subject.
	Subject string `json:"subject,omitempty"`

	// Hold is how long each assignment counts against its backend's load
	// on top of the backend's reported count: reports are seconds old, and
	// a burst must not all go to the backend that looked least loaded.
	// Default: the lesser of token_ttl and 5s. At most 51s.
	Hold caddy.Duration `json:"assign_hold,omitempty"`

	// Selection is how a backend is chosen: "least_loaded" (default; ties
	// broken at random), exact for one balancer and quickest to fill a new
	// backend; or "two_choices", the less loaded of two picked at random,
	// which spreads better when several balancers act on reports that lag
	// during long bursts, and fills a new backend more slowly. See
	// docs/assign.md for measurements.
	Selection string `json:"selection,omitempty"`

	assigner *balancer.Assigner
	logger   *zap.Logger
}

// check validates the configuration; it is pure, for Validate, and also run
// first by provision, which Caddy calls before Validate.
func (c *AssignConfig) check() error {
	if c == nil || c.TokenKey == "" {
		return errors.New("assign mode needs token_key")
	}
	if c.TokenTTL < 0 || time.Duration(c.TokenTTL) > token.DefaultMaxLifetime {
		return fmt.Errorf("token_ttl must be between 0 and %s, got %s", token.DefaultMaxLifetime, time.Duration(c.TokenTTL))
	}
	if c.Hold < 0 || time.Duration(c.Hold) > balancer.MaxAssignHold {
		return fmt.Errorf("assign_hold must be between 0 and %s, got %s", balancer.MaxAssignHold, time.Duration(c.Hold))
	}
	switch c.Response {
	case "", responseAuto, responseRedirect, responseJSON:
	default:
		return fmt.Errorf("response %q is not auto, redirect or json", c.Response)
	}
	switch c.Selection {
	case "", selectionLeastLoaded, selectionTwoChoices:
	default:
		return fmt.Errorf("selection %q is not least_loaded or two_choices", c.Selection)
	}
	return nil
}

// provisionAssign loads the signing key and builds the Assigner over the
// handler's upstream source.
func (h *Handler) provisionAssign() error {
	c := h.Assign
	if err := c.check(); err != nil {
		return err
	}
	c.logger = h.logger
	if c.Response == "" {
		c.Response = responseAuto
	}
	key, err := loadSigningKey(c.TokenKey, c.TokenKID)
	if err != nil {
		return err
	}
	signer, err := token.NewSigner(key, nil)
	if err != nil {
		return fmt.Errorf("token_key: %w", err)
	}
	opts := balancer.AssignOptions{
		Signer:      signer,
		TTL:         time.Duration(c.TokenTTL),
		Hold:        time.Duration(c.Hold),
		MaxAttempts: h.MaxAttempts,
		RetryAfter:  time.Duration(h.RetryAfter),
		OnOutcome:   countAssignment,
		Logger:      h.logger,
		Affinity:    h.affinity,
	}
	if c.Selection == selectionTwoChoices {
		opts.Select = balancer.TwoChoices
	}
	if c.assigner, err = balancer.NewAssigner(h.source, opts); err != nil {
		return err
	}
	h.logger.Info("assign mode ready",
		zap.String("kid", key.ID()), zap.String("alg", string(key.Alg())),
		zap.Duration("token_ttl", c.assigner.TTL()), zap.Duration("assign_hold", c.assigner.Hold()))
	return nil
}

// loadSigningKey loads the key token_key names. A value that is one
// placeholder holds the key itself, unless it names an existing file;
// anything else is a path, placeholders replaced. Errors name the path or the
// placeholder, never the key.
func loadSigningKey(spec, kid string) (token.Key, error) {
	val, err := caddy.NewReplacer().ReplaceOrErr(spec, true, true)
	if err != nil {
		return token.Key{}, fmt.Errorf("token_key: %w", err)
	}
	if isPlaceholder(spec) {
		if fi, err := os.Stat(val); err != nil || !fi.Mode().IsRegular() {
			k, err := token.ParseKey([]byte(val), kid)
			if err != nil {
				return token.Key{}, fmt.Errorf("token_key %s: %w", spec, err)
			}
			return k, nil
		}
	}
	data, err := os.ReadFile(val)
	if err != nil {
		// The path is not shown: a key pasted where a path belongs would
		// end up in the logs.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return token.Key{}, fmt.Errorf("token_key: reading the key file: %w (give a file path, or a placeholder holding the key)", err)
	}
	k, err := token.ParseKey(data, kid)
	if err != nil {
		return token.Key{}, fmt.Errorf("token_key %s: %w", val, err)
	}
	return k, nil
}

// isPlaceholder reports whether s is exactly one placeholder, like
// {env.KEY}.
func isPlaceholder(s string) bool {
	return len(s) > 2 && s[0] == '{' && s[len(s)-1] == '}' && strings.Count(s, "{") == 1 && strings.Count(s, "}") == 1
}

// serveAssign answers an assignment request.
func (h *Handler) serveAssign(w http.ResponseWriter, r *http.Request) error {
	c := h.Assign
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed for an assignment", r.Method))
	}
	var subject string
	if c.Subject != "" {
		repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
		if repl != nil {
			subject = repl.ReplaceAll(c.Subject, "")
		}
		if subject == "" {
			countAssignment("", outcomeNoSubject)
			return caddyhttp.Error(http.StatusForbidden,
				errors.New("the token's subject came out empty: is authentication configured before ws_balancer?"))
		}
	}
	asg, err := c.assigner.AssignRequest(r, subject)
	if err != nil {
		return handlerError(w, err)
	}
	if asg.Cookie != nil {
		http.SetCookie(w, asg.Cookie)
	}
	if ce := c.logger.Check(zapcore.DebugLevel, "assigned"); ce != nil {
		ce.Write(zap.String("backend", asg.Backend), zap.Time("expires_at", asg.ExpiresAt))
	}
	hdr := w.Header()
	hdr.Set("Cache-Control", "no-store")
	if c.Response == responseAuto {
		hdr.Add("Vary", "Accept")
	}
	if c.Response == responseJSON || (c.Response == responseAuto && acceptsJSON(r)) {
		hdr.Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(asg)
	}
	hdr.Set("Location", asg.URL)
	w.WriteHeader(http.StatusTemporaryRedirect)
	return nil
}

// acceptsJSON reports whether the Accept header names application/json
// (with any parameters, other than q=0).
func acceptsJSON(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept") {
		for part := range strings.SplitSeq(v, ",") {
			mt, params, _ := strings.Cut(strings.TrimSpace(part), ";")
			if !strings.EqualFold(strings.TrimSpace(mt), "application/json") {
				continue
			}
			refused := false
			for p := range strings.SplitSeq(params, ";") {
				name, val, _ := strings.Cut(strings.TrimSpace(p), "=")
				if strings.EqualFold(name, "q") && strings.Trim(val, "0.") == "" {
					refused = true
				}
			}
			if !refused {
				return true
			}
		}
	}
	return false
}

// unmarshalAssignOption parses one assign-mode option of the ws_balancer
// block (their syntax is in docs/assign.md); the dispenser is on the
// option's name, which the caller has checked is not given twice.
func (h *Handler) unmarshalAssignOption(d *caddyfile.Dispenser) error {
	opt := d.Val()
	switch opt {
	case "token_key", "token_kid", "token_ttl", "response", "subject", "assign_hold", "selection":
	default:
		return d.Errf("unrecognized subdirective %q", opt)
	}
	if h.Assign == nil {
		h.Assign = new(AssignConfig)
	}
	c := h.Assign
	var err error
	switch opt {
	case "token_key":
		c.TokenKey, err = oneArg(d)
	case "token_kid":
		c.TokenKID, err = oneArg(d)
	case "token_ttl":
		err = durationArg(d, &c.TokenTTL)
	case "assign_hold":
		err = durationArg(d, &c.Hold)
	case "subject":
		c.Subject, err = oneArg(d)
	case "selection":
		if c.Selection, err = oneArg(d); err == nil {
			switch c.Selection {
			case selectionLeastLoaded, selectionTwoChoices:
			default:
				err = d.Errf("selection %q is not least_loaded or two_choices", c.Selection)
			}
		}
	case "response":
		if c.Response, err = oneArg(d); err == nil {
			switch c.Response {
			case responseAuto, responseRedirect, responseJSON:
			default:
				err = d.Errf("response %q is not auto, redirect or json", c.Response)
			}
		}
	}
	return err
}
