package balancer

import (
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// Error is a failed upgrade with the HTTP status the client should get.
// Handlers turn it into their framework's error (caddyhttp.Error in Caddy).
type Error struct {
	Status int
	// Header holds headers the answer must carry, such as Retry-After.
	Header http.Header
	Err    error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func newError(status int, format string, args ...any) *Error {
	return &Error{Status: status, Err: fmt.Errorf(format, args...)}
}

// RetryAfterSeconds renders d as a Retry-After value: whole seconds, rounded
// up so that a client never comes back too early, and at least 1 (0 would
// invite it back at once).
func RetryAfterSeconds(d time.Duration) string {
	return strconv.FormatInt(max(1, int64((d+time.Second-1)/time.Second)), 10)
}
