package token

import (
	"errors"
	"fmt"

	josejson "github.com/go-jose/go-jose/v4/json"
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

// decodeClaims reads the payload of a token whose signature has been
// checked. It uses go-jose's fork of encoding/json, which matches names
// exactly and refuses duplicate names: with encoding/json alone "aud" and
// "AUD", or two "aud" members, could make two readers disagree about which
// backend a token is for. Known claims must have the right JSON type (aud a
// single string, times integers); unknown ones are ignored so that a newer
// issuer may add some during a rolling upgrade.
func decodeClaims(payload []byte) (Claims, error) {
	var c Claims
	if err := josejson.Unmarshal(payload, &c); err != nil {
		return Claims{}, fmt.Errorf("claims: %w", err)
	}
	return c, nil
}
