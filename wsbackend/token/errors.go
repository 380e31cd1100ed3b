package token

import (
	"errors"
	"fmt"
)

// Reasons a token is rejected. They are stable: use them as metric labels and
// in logs, and match on them rather than on error text.
const (
	ReasonMissing         = "missing"           // no token in the request (Middleware only)
	ReasonMalformed       = "malformed"         // not a well-formed token
	ReasonBadSignature    = "bad_signature"     // signature does not verify
	ReasonUnknownKID      = "unknown_kid"       // no key with the header's kid
	ReasonAlgMismatch     = "alg_mismatch"      // header alg is not the key's alg, or is unsupported ("none")
	ReasonExpired         = "expired"           // now is past exp plus leeway
	ReasonNotYetValid     = "not_yet_valid"     // nbf or iat is later than now plus leeway
	ReasonWrongAudience   = "wrong_audience"    // issued for another backend
	ReasonReplayed        = "replayed"          // this jti was already accepted
	ReasonTooLongLived    = "too_long_lived"    // exp-iat exceeds the verifier's MaxLifetime
	ReasonReplayCacheFull = "replay_cache_full" // replay cache full of live entries; failing closed
)

// Error is a rejected token. Reason is one of the Reason constants; Err, if
// set, holds detail for logs. Neither ever contains key material or the token.
//
// errors.Is(err, ErrExpired) and friends match on Reason alone.
type Error struct {
	Reason string
	Err    error
}

// Sentinel errors, one per reason, for errors.Is.
var (
	ErrMissing         = &Error{Reason: ReasonMissing}
	ErrMalformed       = &Error{Reason: ReasonMalformed}
	ErrBadSignature    = &Error{Reason: ReasonBadSignature}
	ErrUnknownKID      = &Error{Reason: ReasonUnknownKID}
	ErrAlgMismatch     = &Error{Reason: ReasonAlgMismatch}
	ErrExpired         = &Error{Reason: ReasonExpired}
	ErrNotYetValid     = &Error{Reason: ReasonNotYetValid}
	ErrWrongAudience   = &Error{Reason: ReasonWrongAudience}
	ErrReplayed        = &Error{Reason: ReasonReplayed}
	ErrTooLongLived    = &Error{Reason: ReasonTooLongLived}
	ErrReplayCacheFull = &Error{Reason: ReasonReplayCacheFull}
)

func (e *Error) Error() string {
	if e.Err == nil {
		return "token rejected: " + e.Reason
	}
	return "token rejected: " + e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

// Is reports whether target is an *Error with the same Reason.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

// ReasonOf returns the Reason of the *Error in err's chain, "" for nil, and
// "error" for any other error.
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return "error"
}

func reject(reason, format string, args ...any) *Error {
	return &Error{Reason: reason, Err: fmt.Errorf(format, args...)}
}
