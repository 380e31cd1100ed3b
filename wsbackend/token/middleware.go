package token

import (
	"context"
	"net/http"
	"net/url"
	"strings"
)

// DefaultQueryParam is the query parameter Middleware reads the token from.
const DefaultQueryParam = "token"

// MiddlewareOptions configure Middleware. The zero value is ready to use.
type MiddlewareOptions struct {
	// QueryParam names the query parameter holding the token. Empty means
	// DefaultQueryParam. Browsers cannot set headers on a WebSocket, so this
	// is how they send it; other clients may use "Authorization: Bearer"
	// instead. A request carrying both is rejected as malformed rather than
	// guessing which one counts.
	QueryParam string

	// KeepToken leaves the token in the request passed on. By default it is
	// removed from the URL (and the Authorization header dropped) so that
	// the application and its access logs never see it.
	KeepToken bool

	// OnReject, if set, is called with each rejected request and the reason
	// (one of the Reason constants) before the response is written, for logs
	// and metrics. It must not write to the response.
	OnReject func(r *http.Request, reason string)
}

// Middleware verifies the token of each request before it reaches next, that
// is before the WebSocket upgrade, so a rejected client gets a plain HTTP
// answer and never a socket. On success next runs with the claims in the
// request context (see ClaimsFromContext). On failure it answers with a
// one-line text reason:
//
//   - 401 for a missing, malformed, forged, unknown-key, expired, not yet
//     valid or too long-lived token, with WWW-Authenticate: Bearer;
//   - 403 for a valid token for another backend, or one already used;
//   - 503 when the replay cache is full (see ReplayCache), with Retry-After.
func Middleware(v *Verifier, opts MiddlewareOptions) func(http.Handler) http.Handler {
	if v == nil {
		panic("token: Middleware called with a nil Verifier")
	}
	param := opts.QueryParam
	if param == "" {
		param = DefaultQueryParam
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok, reason := tokenFromRequest(r, param)
			var claims *Claims
			if reason == "" {
				var err error
				if claims, err = v.Verify(tok); err != nil {
					reason = ReasonOf(err)
				}
			}
			if reason != "" {
				if opts.OnReject != nil {
					opts.OnReject(r, reason)
				}
				writeRejection(w, reason)
				return
			}
			ctx := NewContext(r.Context(), claims)
			if opts.KeepToken {
				r = r.WithContext(ctx)
			} else {
				r = withoutToken(r.Clone(ctx), param)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// tokenFromRequest returns the token, or the reason there is no usable one.
func tokenFromRequest(r *http.Request, param string) (token, reason string) {
	query := r.URL.Query()[param]
	var bearer []string
	for _, h := range r.Header.Values("Authorization") {
		scheme, cred, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			bearer = append(bearer, strings.TrimSpace(cred))
		}
	}
	switch {
	case len(query)+len(bearer) == 0:
		return "", ReasonMissing
	case len(query)+len(bearer) > 1:
		return "", ReasonMalformed
	case len(query) == 1:
		return query[0], ""
	default:
		return bearer[0], ""
	}
}

// withoutToken removes the token parameter from r's query, keeping the other
// parameters exactly as sent, and drops a bearer Authorization header. r must
// be a copy the caller owns.
func withoutToken(r *http.Request, param string) *http.Request {
	if r.URL.RawQuery != "" {
		parts := strings.Split(r.URL.RawQuery, "&")
		kept := parts[:0]
		for _, p := range parts {
			name, _, _ := strings.Cut(p, "=")
			if n, err := url.QueryUnescape(name); err == nil && n == param {
				continue
			}
			kept = append(kept, p)
		}
		r.URL.RawQuery = strings.Join(kept, "&")
		if r.RequestURI != "" {
			r.RequestURI = r.URL.RequestURI()
		}
	}
	for _, h := range r.Header.Values("Authorization") {
		if scheme, _, _ := strings.Cut(h, " "); strings.EqualFold(scheme, "Bearer") {
			r.Header.Del("Authorization")
			break
		}
	}
	return r
}

// statusFor maps a reason to the HTTP status Middleware answers with.
func statusFor(reason string) int {
	switch reason {
	case ReasonWrongAudience, ReasonReplayed:
		// The token is genuine and understood; it just grants nothing here.
		return http.StatusForbidden
	case ReasonReplayCacheFull:
		return http.StatusServiceUnavailable
	default:
		return http.StatusUnauthorized
	}
}

func writeRejection(w http.ResponseWriter, reason string) {
	status := statusFor(reason)
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	switch status {
	case http.StatusUnauthorized:
		if reason == ReasonMissing {
			h.Set("WWW-Authenticate", "Bearer")
		} else {
			h.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		}
	case http.StatusServiceUnavailable:
		h.Set("Retry-After", "1")
	}
	http.Error(w, "token rejected: "+reason, status)
}

type claimsKey struct{}

// NewContext returns a copy of ctx carrying claims, as Middleware does.
func NewContext(ctx context.Context, claims *Claims) context.Context {
	return context.WithValue(ctx, claimsKey{}, claims)
}

// ClaimsFromContext returns the claims Middleware verified for this request.
func ClaimsFromContext(ctx context.Context) (*Claims, bool) {
	c, ok := ctx.Value(claimsKey{}).(*Claims)
	return c, ok && c != nil
}
