package token

import (
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
)

// withHeader makes a token with the given header JSON, an empty claims
// object and a signature that is never checked here.
func withHeader(headerJSON string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(headerJSON)) + ".e30.AAAA"
}

func TestParseHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in       string
		alg, kid string // wanted on success
		reason   string // "" = success
	}{
		{`{"alg":"EdDSA","kid":"k1","typ":"JWT"}`, "EdDSA", "k1", ""},
		{`{"kid":"k1","alg":"HS256"}`, "HS256", "k1", ""},
		{` {"alg":"HS256","kid":"k1","typ":"jwt"} `, "HS256", "k1", ""},
		{`{"alg":"HS256","kid":"k1","jku":"https://evil","x5u":1}`, "HS256", "k1", ""},
		{`{"a\u006cg":"HS256","kid":"k1"}`, "HS256", "k1", ""},
		{`{"ALG":"none","alg":"HS256"}`, "HS256", "", ""}, // exact names: ALG is an unknown member
		{`{"alg":"HS256","a\u006cg":"none"}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","alg":"HS256"}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","crit":[]}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","crit":["b64"],"b64":false}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","b64":false}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","typ":"JOSE+JSON"}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","typ":1}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","kid":1}`, "", "", ReasonMalformed},
		{`{"alg":"HS256","jwk":{"kty":"oct","k":"AAAA"}}`, "", "", ReasonMalformed},
		{`{"alg":"none"}`, "", "", ReasonAlgMismatch},
		{`{"alg":"HS512"}`, "", "", ReasonAlgMismatch},
		{`{"alg":"eddsa"}`, "", "", ReasonAlgMismatch},
		{`{"alg":null}`, "", "", ReasonAlgMismatch},
		{`{"alg":1}`, "", "", ReasonAlgMismatch},
		{`{"kid":"k1"}`, "", "", ReasonAlgMismatch},
		{`{"alg":"HS256"} {}`, "", "", ReasonMalformed},
		{`{"alg":"HS256"}x`, "", "", ReasonMalformed},
		{`[]`, "", "", ReasonMalformed},
		{`"x"`, "", "", ReasonMalformed},
		{`null`, "", "", ReasonMalformed},
		{``, "", "", ReasonMalformed},
		{`{"alg":"HS256"`, "", "", ReasonMalformed},
		{`{"alg" "HS256"}`, "", "", ReasonMalformed},
	}
	for _, tt := range tests {
		_, h, err := parse(withHeader(tt.in))
		if got := ReasonOf(err); got != tt.reason {
			t.Errorf("parse(%s): reason %q (%v), want %q", tt.in, got, err, tt.reason)
			continue
		}
		if err == nil && (h.Algorithm != tt.alg || h.KeyID != tt.kid) {
			t.Errorf("parse(%s): alg %q kid %q, want %q %q", tt.in, h.Algorithm, h.KeyID, tt.alg, tt.kid)
		}
	}
}

func TestCheckSpelling(t *testing.T) {
	t.Parallel()
	valid := withHeader(`{"alg":"HS256"}`)
	tests := []struct {
		name, token string
		ok          bool
	}{
		{"valid", valid, true},
		{"empty", "", false},
		{"longest allowed", strings.Repeat("A", MaxTokenLength-6) + ".AA.AA", true},
		{"one byte too long", strings.Repeat("A", MaxTokenLength-5) + ".AA.AA", false},
		{"two segments", "AA.AA", false},
		{"four segments", valid + ".AA", false},
		{"empty payload", "AA..AA", false},
		{"empty signature", "AA.AA.", false},
		{"padding", valid + "==", false},
		{"standard alphabet", "a+b/.AA.AA", false},
		{"newline", "AA.A\nA.AA", false},
		{"non-zero trailing bits", "AB.AA.AA", false}, // "AA" is the one spelling of 0x00
		{"impossible length", "AAAAA.AA.AA", false},
	}
	for _, tt := range tests {
		err := checkSpelling(tt.token)
		if (err == nil) != tt.ok || err != nil && ReasonOf(err) != ReasonMalformed {
			t.Errorf("%s: checkSpelling = %v, want ok %v", tt.name, err, tt.ok)
		}
	}
}

// FuzzParse feeds the same bytes to the header parser (as a token's header)
// and to the claims decoder. They must never panic; whatever they accept must
// be a JSON object that encoding/json reads too, and accepted claims must
// survive a round trip through encoding/json.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"alg":"EdDSA","kid":"k1","typ":"JWT"}`,
		`{"aud":"b","sub":"s","iat":10,"nbf":10,"exp":40,"jti":"j"}`,
		`{"alg":"HS256","alg":"none"}`,
		`{"crit":["b64"],"b64":false}`,
		`{"aud":["a","b"],"exp":1.5}`,
		`{"a\u0075d":"x","aud":"y"}`,
		`{"x":{"y":[1,{"z":null}]}}`,
		`[]`, `{`, `{}{}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, h, herr := parse(withHeader(string(data)))
		c, cerr := decodeClaims(data)
		if herr == nil || cerr == nil {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("parser accepted what encoding/json rejects: %v", err)
			}
		}
		if herr == nil && h.Algorithm != "EdDSA" && h.Algorithm != "HS256" {
			t.Fatalf("header with alg %q accepted", h.Algorithm)
		}
		if herr != nil && ReasonOf(herr) != ReasonMalformed && ReasonOf(herr) != ReasonAlgMismatch {
			t.Fatalf("header rejected with reason %q: %v", ReasonOf(herr), herr)
		}
		if cerr == nil {
			b, _ := json.Marshal(c)
			if c2, err := decodeClaims(b); err != nil || c2 != c {
				t.Fatalf("claims round trip: %+v -> %s -> %+v, %v", c, b, c2, err)
			}
		}
	})
}
