package token

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseHeader(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want header
		err  string
	}{
		{`{"alg":"EdDSA","kid":"k1","typ":"JWT"}`, header{EdDSA, "k1", "JWT"}, ""},
		{`{"kid":"k1","alg":"HS256"}`, header{HS256, "k1", ""}, ""},
		{` {"alg":"HS256","kid":"k1","typ":"jwt"} `, header{HS256, "k1", "jwt"}, ""},
		{`{"alg":"HS256","kid":"k1","jku":"https://evil","x5u":1}`, header{HS256, "k1", ""}, ""},
		{`{"a\u006cg":"HS256","kid":"k1"}`, header{HS256, "k1", ""}, ""},
		{`{"alg":"HS256","a\u006cg":"none"}`, header{}, "duplicate"},
		{`{"alg":"HS256","alg":"HS256"}`, header{}, "duplicate"},
		{`{"ALG":"none","alg":"HS256"}`, header{HS256, "", ""}, ""}, // exact names: ALG is an unknown member
		{`{"alg":"HS256","crit":[]}`, header{}, "critical"},
		{`{"alg":"HS256","typ":"JOSE+JSON"}`, header{}, "typ"},
		{`{"alg":null}`, header{}, "not a string"},
		{`{"alg":1}`, header{}, "not a string"},
		{`{"alg":"HS256"} {}`, header{}, "trailing"},
		{`{"alg":"HS256"}x`, header{}, ""}, // checked below: any error
		{`[]`, header{}, "not a JSON object"},
		{`"x"`, header{}, "not a JSON object"},
		{``, header{}, "EOF"},
		{`{"alg":"HS256"`, header{}, ""},
		{`{"alg" "HS256"}`, header{}, ""},
	}
	for _, tt := range tests {
		got, err := parseHeader([]byte(tt.in))
		wantErr := tt.err != "" || tt.want == (header{})
		if wantErr {
			if err == nil {
				t.Errorf("parseHeader(%s) = %+v, want error", tt.in, got)
			} else if !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseHeader(%s) error %q, want it to contain %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseHeader(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseClaims(t *testing.T) {
	t.Parallel()
	full := Claims{Audience: "b", Subject: "s", IssuedAt: 10, NotBefore: 10, ExpiresAt: 40, ID: "j"}
	tests := []struct {
		in   string
		want Claims
		err  string
	}{
		{`{"aud":"b","sub":"s","iat":10,"nbf":10,"exp":40,"jti":"j"}`, full, ""},
		{`{"jti":"j","exp":40,"nbf":10,"iat":10,"sub":"s","aud":"b","extra":{"x":[1,2]}}`, full, ""},
		{`{"aud":"b","aud":"c"}`, Claims{}, "duplicate"},
		{`{"aud":["b"]}`, Claims{}, "aud: not a string"},
		{`{"aud":null}`, Claims{}, "aud: not a string"},
		{`{"exp":1.5}`, Claims{}, "exp: not an integer"},
		{`{"exp":1e9}`, Claims{}, "exp: not an integer"},
		{`{"exp":"40"}`, Claims{}, "exp: not an integer"},
		{`{"exp":99999999999999999999}`, Claims{}, "exp: not an integer"},
		{`{"iat":-1}`, Claims{IssuedAt: -1}, ""},
		{`{"sub":"\ud800"}`, Claims{Subject: "\ufffd"}, ""},
	}
	for _, tt := range tests {
		got, err := parseClaims([]byte(tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("parseClaims(%s) = %+v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("parseClaims(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestClaimsCheck(t *testing.T) {
	t.Parallel()
	ok := Claims{Audience: "b", IssuedAt: 10, NotBefore: 10, ExpiresAt: 40, ID: "j"}
	tests := []struct {
		name string
		edit func(*Claims)
		err  string
	}{
		{"valid", func(*Claims) {}, ""},
		{"nbf zero is allowed", func(c *Claims) { c.NotBefore = 0 }, ""},
		{"no aud", func(c *Claims) { c.Audience = "" }, "aud"},
		{"no jti", func(c *Claims) { c.ID = "" }, "jti"},
		{"long jti", func(c *Claims) { c.ID = strings.Repeat("j", maxIDLength+1) }, "jti"},
		{"no iat", func(c *Claims) { c.IssuedAt = 0 }, "iat"},
		{"no exp", func(c *Claims) { c.ExpiresAt = 0 }, "exp"},
		{"exp past year 9999", func(c *Claims) { c.ExpiresAt = maxUnixTime + 1 }, "exp"},
		{"negative nbf", func(c *Claims) { c.NotBefore = -1 }, "nbf"},
		{"exp before iat", func(c *Claims) { c.ExpiresAt = 9 }, "exp before iat"},
		{"nbf after exp", func(c *Claims) { c.NotBefore = 41 }, "nbf after exp"},
	}
	for _, tt := range tests {
		c := ok
		tt.edit(&c)
		err := c.check()
		if (tt.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.err) {
			t.Errorf("%s: check() = %v, want %q", tt.name, err, tt.err)
		}
	}
}

// FuzzParse feeds the same bytes to the header and claims parsers. They must
// never panic; whatever they accept must have been a JSON object without
// duplicate names, and must survive a round trip through encoding/json.
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
		h, herr := parseHeader(data)
		c, cerr := parseClaims(data)
		if herr == nil || cerr == nil {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatalf("parser accepted what encoding/json rejects: %v", err)
			}
		}
		if herr == nil {
			b, _ := json.Marshal(h)
			if h2, err := parseHeader(b); err != nil || h2 != h {
				t.Fatalf("header round trip: %+v -> %s -> %+v, %v", h, b, h2, err)
			}
		}
		if cerr == nil {
			b, _ := json.Marshal(c)
			if c2, err := parseClaims(b); err != nil || c2 != c {
				t.Fatalf("claims round trip: %+v -> %s -> %+v, %v", c, b, c2, err)
			}
		}
	})
}
