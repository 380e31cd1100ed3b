package token

import (
	"encoding/base64"
	"errors"
	"strings"

	jose "github.com/go-jose/go-jose/v4"
)

// MaxTokenLength is the longest token Verify will look at, in bytes. Ours are
// about 300; the bound is checked before any decoding so that junk costs
// nothing.
const MaxTokenLength = 4096

// algs is what go-jose may accept in the header alg: ours and nothing else,
// so "none", RSA, ECDSA and the other HMACs are refused while parsing.
var algs = []jose.SignatureAlgorithm{jose.EdDSA, jose.HS256}

// parse checks a token's size and spelling, has go-jose decode it and read
// its header, and applies our rules to that header. Nothing is verified yet.
func parse(token string) (*jose.JSONWebSignature, jose.Header, error) {
	if err := checkSpelling(token); err != nil {
		return nil, jose.Header{}, err
	}
	jws, err := jose.ParseSignedCompact(token, algs)
	if err != nil {
		var alg *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &alg) {
			return nil, jose.Header{}, reject(ReasonAlgMismatch, "unsupported alg %.32q", alg.Got)
		}
		return nil, jose.Header{}, reject(ReasonMalformed, "parsing: %w", err)
	}
	// A compact serialisation always has exactly one signature.
	h := jws.Signatures[0].Header
	if err := checkHeader(h); err != nil {
		return nil, jose.Header{}, reject(ReasonMalformed, "header: %w", err)
	}
	return jws, h, nil
}

// checkSpelling bounds the token's size and requires it to be three
// non-empty segments of canonical unpadded base64url. go-jose's decoder is
// lenient (it skips CR and LF and ignores non-zero trailing bits) and it
// checks the signature over a re-encoding of what it decoded, so without this
// check one token could be written many ways.
func checkSpelling(token string) error {
	if token == "" {
		return reject(ReasonMalformed, "empty token")
	}
	if len(token) > MaxTokenLength {
		return reject(ReasonMalformed, "token is %d bytes, more than %d", len(token), MaxTokenLength)
	}
	dots := 0
	for i := 0; i < len(token); i++ {
		switch c := token[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		case c == '.':
			dots++
		default:
			return reject(ReasonMalformed, "byte %d is not base64url", i)
		}
	}
	if dots != 2 {
		return reject(ReasonMalformed, "want 3 dot-separated segments, got %d", dots+1)
	}
	for i, seg := range strings.Split(token, ".") {
		if seg == "" {
			return reject(ReasonMalformed, "segment %d is empty", i+1)
		}
		if _, err := base64.RawURLEncoding.Strict().DecodeString(seg); err != nil {
			return reject(ReasonMalformed, "segment %d: %w", i+1, err)
		}
	}
	return nil
}

// checkHeader adds our rules to go-jose's, which has already refused
// duplicate and case-variant names, a header that is not a JSON object, and
// any alg outside algs:
//
//   - no "crit" at all, because a critical extension we do not implement must
//     make the token invalid (RFC 7515 section 4.1.11), and go-jose
//     implements one we do not want;
//   - no "b64" (RFC 7797 unencoded payload), which go-jose honours even when
//     it is not listed in "crit", where other verifiers would ignore it;
//   - "typ", if present, is "JWT" in any case.
//
// Other members (jku, x5u, ...) are ignored: keys come only from the
// verifier's own set, never from the token.
func checkHeader(h jose.Header) error {
	if _, ok := h.ExtraHeaders["crit"]; ok {
		return errors.New("critical header extensions are not supported")
	}
	if _, ok := h.ExtraHeaders["b64"]; ok {
		return errors.New("unencoded payloads (b64) are not supported")
	}
	if typ, ok := h.ExtraHeaders[jose.HeaderType]; ok {
		if s, _ := typ.(string); !strings.EqualFold(s, "JWT") {
			return errors.New(`typ is not "JWT"`)
		}
	}
	return nil
}
