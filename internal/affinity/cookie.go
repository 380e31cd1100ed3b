package affinity

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
)

// cookieContext separates these MACs from any other use of the same key
// (assign mode's HS256 token key, say): a cookie value can never double as
// another MAC, nor the other way round.
const cookieContext = "wsbalancer affinity cookie v1\x00"

// cookieTagLen is the MAC length kept: 128 bits cannot be guessed, and the
// value stays a 22-character token.
const cookieTagLen = 16

// MinCookieKeyLen is the shortest key NewCookies accepts.
const MinCookieKeyLen = 16

// Cookies names the backends of one set in sticky-cookie values: the
// base64url of a truncated HMAC-SHA256 of the backend's ID. A value reveals
// neither the backend's address nor its ID, and cannot be made without the
// key, so a client cannot aim at a backend of its choosing. Build a new
// Cookies whenever the ring is rebuilt; a value naming a backend that has
// left then matches nothing. All balancers must share the key for a cookie
// set by one to be honoured by another.
type Cookies struct {
	values [][]byte // values[i] names member i, encoded
}

var cookieEncoding = base64.RawURLEncoding

// NewCookies prepares the cookie values of ids (in the ring's order) under
// key, which must hold at least MinCookieKeyLen bytes.
func NewCookies(key []byte, ids []string) (*Cookies, error) {
	if len(key) < MinCookieKeyLen {
		return nil, errors.New("affinity cookie key: shorter than 16 bytes")
	}
	c := &Cookies{values: make([][]byte, len(ids))}
	mac := hmac.New(sha256.New, key)
	for i, id := range ids {
		mac.Reset()
		mac.Write([]byte(cookieContext))
		mac.Write([]byte(id))
		c.values[i] = cookieEncoding.AppendEncode(nil, mac.Sum(nil)[:cookieTagLen])
	}
	return c, nil
}

// Value is the cookie value naming member i.
func (c *Cookies) Value(i int) string { return string(c.values[i]) }

// Match returns the member a cookie value names. ok is false for a forged,
// malformed or stale value (one naming a backend no longer in the set). It
// compares against every member in constant time and does not stop at the
// first match, so the time taken says nothing about which, if any, matched.
func (c *Cookies) Match(value string) (i int, ok bool) {
	if len(value) != cookieEncoding.EncodedLen(cookieTagLen) {
		return -1, false
	}
	var buf [32]byte // 22 bytes: keeps the conversion off the heap
	v := append(buf[:0], value...)
	i = -1
	for j, want := range c.values {
		i = subtle.ConstantTimeSelect(subtle.ConstantTimeCompare(v, want), j, i)
	}
	return i, i >= 0
}
