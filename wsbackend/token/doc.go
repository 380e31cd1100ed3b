// Package token issues and verifies the short-lived, single-use tokens of
// assign mode.
//
// In assign mode the balancer's /assign endpoint picks the least-loaded
// backend and hands the client that backend's public WebSocket URL with a
// token; the client connects straight to the backend, which must check that
// the token is genuine, is for this backend, is fresh, and has not been used
// before. The balancer uses a Signer; each backend a Verifier, usually through
// Middleware in front of its WebSocket handler.
//
// # Format
//
// Tokens are JWS compact serialisations (RFC 7515), so any JWT tool can
// decode them:
//
//	base64url(header) "." base64url(claims) "." base64url(signature)
//
// with header {"alg":"EdDSA"|"HS256","kid":"...","typ":"JWT"} and the claims
// aud (backend ID), sub (client identity, optional), iat, nbf, exp (Unix
// seconds) and jti (128 random bits). A token is about 300 bytes and lives
// DefaultTTL (30s) unless told otherwise.
//
// # Keys
//
// Ed25519 (EdDSA) is the recommended algorithm: the balancer signs with the
// private key and backends hold only the public key, so a compromised backend
// cannot mint tokens for its peers. HMAC-SHA256 (HS256) with a shared secret
// of at least 32 bytes is supported for simple setups; every holder of the
// secret can mint tokens. The cmd/wskeygen command writes either kind in the
// formats ParseKey and LoadKeyFile read. Key material never appears in
// String, %v, %#v, slog output or error messages.
//
// Every key has a key ID (kid), derived from the key unless given. To rotate:
// give the verifiers the new key in addition to the old one (Verifier.SetKeys
// or VerifierOptions.Keys), switch the balancer to a Signer with the new key,
// wait for the old tokens to expire (the TTL plus leeway), then remove the old
// key from the verifiers. Its tokens then fail with unknown_kid.
//
// # Library
//
// Parsing, signing and signature checks are github.com/go-jose/go-jose/v4;
// this package adds the rules above it: keys, claims, audience, lifetime,
// single use. go-jose rather than golang-jwt because it makes those rules
// the simplest to keep:
//
//   - its JSON decoder refuses duplicate member names and matches names
//     exactly, in the header and, used here for the claims, in the payload;
//     golang-jwt uses encoding/json, where the last duplicate wins and "AUD"
//     fills aud, so a hand-written JSON walker would have had to stay;
//   - it takes the list of acceptable algs at parse time and picks the
//     verifier from the Go type of the key we hand it, so the header alg can
//     never turn an Ed25519 public key into an HMAC secret;
//   - it was already in the module graph: Caddy and its ACME client use it.
//
// # Verification
//
// Verify rejects with an *Error whose Reason is a stable string for metrics
// and logs (see the Reason constants), matched with errors.Is against the Err
// sentinels or read with errors.As. Hardening worth knowing about:
//
//   - Tokens longer than MaxTokenLength, or with any byte outside the
//     base64url alphabet and the two dots, are rejected before any decoding;
//     each segment must be canonical base64url, so a token has exactly one
//     spelling.
//   - The header alg must be EdDSA or HS256, and it must equal the alg of the
//     key chosen by kid from the verifier's own set: "none" is never
//     accepted, and an Ed25519 public key is never used as an HMAC secret.
//     Keys named in the token (jwk, jku, x5c, x5u) are never used.
//   - The header and claims must be JSON objects without duplicate members;
//     names are matched exactly; "crit" and "b64" headers are rejected. The
//     claims are decoded only after the signature is verified.
//   - HMAC signatures are compared in constant time.
//   - exp-iat may not exceed MaxLifetime, and iat or nbf in the future (beyond
//     the leeway) is refused, so no token is usable for longer than
//     MaxLifetime plus leeway.
//   - A ReplayCache accepts each jti once, fails closed when full, and needs
//     bounded memory (see ReplayCache for the trade-off).
//
// testdata/jsinterop checks that tokens made here verify with the jose npm
// package, and that forged ones do not.
package token
