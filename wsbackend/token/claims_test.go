package token

import (
	"strings"
	"testing"
)

func TestDecodeClaims(t *testing.T) {
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
		{`{"a\u0075d":"b","aud":"c"}`, Claims{}, "duplicate"},
		{`{"AUD":"b"}`, Claims{}, ""}, // exact names: AUD is an unknown claim
		{`{"aud":["b"]}`, Claims{}, "string"},
		{`{"aud":1}`, Claims{}, "string"},
		{`{"aud":null}`, Claims{}, ""}, // left empty; check rejects a missing aud
		{`{"exp":1.5}`, Claims{}, "int64"},
		{`{"exp":1e9}`, Claims{}, "int64"},
		{`{"exp":"40"}`, Claims{}, "int64"},
		{`{"exp":99999999999999999999}`, Claims{}, "int64"},
		{`{"iat":-1}`, Claims{IssuedAt: -1}, ""},
		{`{"sub":"\ud800"}`, Claims{Subject: "\ufffd"}, ""},
		{`{"aud":"b"} {}`, Claims{}, "after top-level value"},
		{`[]`, Claims{}, "array"},
		{`not json`, Claims{}, "invalid character"},
		{``, Claims{}, "end of JSON input"},
	}
	for _, tt := range tests {
		got, err := decodeClaims([]byte(tt.in))
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("decodeClaims(%s) = %+v, %v; want error containing %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("decodeClaims(%s) = %+v, %v; want %+v", tt.in, got, err, tt.want)
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
