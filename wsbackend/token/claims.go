package token

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Claims are what a token asserts. Times are Unix seconds, as in JWT
// (RFC 7519 section 2, "NumericDate"), restricted to integers.
type Claims struct {
	// Audience is the ID of the one backend the token is for.
	Audience string `json:"aud"`
	// Subject identifies the client, if the issuer knows it; may be empty.
	Subject string `json:"sub,omitempty"`
	// IssuedAt is when the token was made.
	IssuedAt int64 `json:"iat"`
	// NotBefore is when the token starts to be valid; normally IssuedAt.
	NotBefore int64 `json:"nbf"`
	// ExpiresAt is when the token stops being valid.
	ExpiresAt int64 `json:"exp"`
	// ID is unique per token (128 random bits, base64url) so that a backend
	// can accept each token once.
	ID string `json:"jti"`
}

const (
	// maxIDLength bounds jti, which the replay cache stores; ours are 22.
	maxIDLength = 128
	// maxUnixTime is the end of year 9999. Bounding times keeps all the
	// arithmetic on them far from overflow.
	maxUnixTime = 253402300799
)

// check is the structural validation shared by the signer (to refuse
// producing tokens the verifier would reject) and the verifier. It says
// nothing about the current time or the audience.
func (c *Claims) check() error {
	switch {
	case c.Audience == "":
		return errors.New("missing aud")
	case c.ID == "":
		return errors.New("missing jti")
	case len(c.ID) > maxIDLength:
		return fmt.Errorf("jti longer than %d bytes", maxIDLength)
	case c.IssuedAt <= 0 || c.IssuedAt > maxUnixTime:
		return errors.New("iat missing or out of range")
	case c.ExpiresAt <= 0 || c.ExpiresAt > maxUnixTime:
		return errors.New("exp missing or out of range")
	case c.NotBefore < 0 || c.NotBefore > maxUnixTime:
		return errors.New("nbf out of range")
	case c.ExpiresAt < c.IssuedAt:
		return errors.New("exp before iat")
	case c.NotBefore > c.ExpiresAt:
		return errors.New("nbf after exp")
	}
	return nil
}

// header is the JOSE header. Fields are in the order they are written.
type header struct {
	Alg Alg    `json:"alg"`
	KID string `json:"kid"`
	Typ string `json:"typ,omitempty"`
}

// parseHeader reads the JOSE header of a token that is not yet authenticated,
// so it is strict: a JSON object, no duplicate members, exact (case-sensitive)
// names, string values, typ absent or "JWT", and no "crit" at all, because a
// critical extension we do not implement must make the token invalid
// (RFC 7515 section 4.1.11). Other unknown members (jku, jwk, x5c, ...) are
// ignored: keys come only from the verifier's own set, never from the token.
func parseHeader(data []byte) (header, error) {
	var h header
	err := parseObject(data, func(name string, raw json.RawMessage) error {
		var err error
		switch name {
		case "alg":
			var s string
			s, err = jsonString(raw)
			h.Alg = Alg(s)
		case "kid":
			h.KID, err = jsonString(raw)
		case "typ":
			h.Typ, err = jsonString(raw)
			if err == nil && !asciiEqualFold(h.Typ, "JWT") {
				err = fmt.Errorf("unsupported typ %.32q", h.Typ)
			}
		case "crit":
			err = errors.New("critical header extensions are not supported")
		}
		return err
	})
	if err != nil {
		return header{}, fmt.Errorf("header: %w", err)
	}
	return h, nil
}

// parseClaims reads the payload of a token whose signature has been checked.
// Unknown claims are ignored so that a newer issuer may add some during a
// rolling upgrade; known ones must have the right JSON type (aud as a single
// string, times as integers) and appear once.
func parseClaims(data []byte) (Claims, error) {
	var c Claims
	err := parseObject(data, func(name string, raw json.RawMessage) error {
		var err error
		switch name {
		case "aud":
			c.Audience, err = jsonString(raw)
		case "sub":
			c.Subject, err = jsonString(raw)
		case "jti":
			c.ID, err = jsonString(raw)
		case "iat":
			c.IssuedAt, err = jsonInt(raw)
		case "nbf":
			c.NotBefore, err = jsonInt(raw)
		case "exp":
			c.ExpiresAt, err = jsonInt(raw)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	if err != nil {
		return Claims{}, fmt.Errorf("claims: %w", err)
	}
	return c, nil
}

// parseObject walks the members of one top-level JSON object, rejecting
// duplicate names and trailing data. encoding/json alone would keep the last
// duplicate and match names case-insensitively, so "aud" and "AUD" could
// disagree about which backend a token is for; here every name is seen once
// and compared exactly.
func parseObject(data []byte, member func(name string, raw json.RawMessage) error) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return errors.New("not a JSON object")
	}
	seen := make(map[string]struct{}, 8)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		name, ok := tok.(string)
		if !ok {
			return errors.New("invalid member name")
		}
		if _, dup := seen[name]; dup {
			return fmt.Errorf("duplicate member %.32q", name)
		}
		seen[name] = struct{}{}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return err
		}
		if err := member(name, raw); err != nil {
			return err
		}
	}
	if _, err := dec.Token(); err != nil { // the closing '}'
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("trailing data after JSON object")
	}
	return nil
}

// jsonString decodes a JSON string; null or any other type is an error
// (json.Unmarshal would quietly leave the target empty for null).
func jsonString(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", errors.New("not a string")
	}
	var s string
	err := json.Unmarshal(raw, &s)
	return s, err
}

// jsonInt decodes a JSON number that is an integer written without fraction
// or exponent, which is how every issuer writes NumericDate in practice.
func jsonInt(raw json.RawMessage) (int64, error) {
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		return 0, errors.New("not an integer")
	}
	return n, nil
}

func asciiEqualFold(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'a' <= x && x <= 'z' {
			x -= 'a' - 'A'
		}
		if 'a' <= y && y <= 'z' {
			y -= 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
