// Package protocol is the wire contract between ws_balancer and its
// backends and clients, defined once: the Consul service meta keys a
// backend reports its load with, the JSON answer of /assign, the close
// codes the balancer sends, and what counts as a WebSocket upgrade
// request. The claims of the tokens it signs are in package token.
//
// It imports nothing beyond the standard library, so the balancer
// (internal/balancer), discovery (consul), the backend library (wsbackend)
// and the client (wsbackend/client) all import the same definitions without
// pulling in each other; backends in other languages follow
// docs/protocol.md.
package protocol

import "time"

// The load-report protocol: how a backend tells every balancer, through
// Consul, where it is and how loaded it is. Any backend in any language can
// follow it with Consul's HTTP API alone; package wsbackend does it for Go
// backends (Register).
//
// A backend registers a service (one name shared by all backends) with
// Address and Port set to where balancers in proxy mode dial it, and these
// service meta keys (values are strings, as Consul requires):
const (
	// MetaConnections is the backend's live WebSocket connection count, a
	// decimal integer. Re-registering the service updates it at once (each
	// re-registration is a Raft write that wakes every watcher, so backends
	// publish in coarse steps: see the library's Reporter).
	MetaConnections = "ws_connections"
	// MetaCountedAt is when the backend read the count in MetaConnections,
	// in Unix milliseconds by its clock. Balancers match the report with
	// their own count at that moment, so that connections opened while
	// the report travelled are counted once. Optional: without it a
	// balancer matches the report with its count on arrival.
	MetaCountedAt = "ws_counted_at"
	// MetaCapacity is how many connections the backend accepts at most, a
	// decimal integer; absent or 0 means unlimited. It caps the backend's
	// load like max_conns.
	MetaCapacity = "ws_capacity"
	// MetaURL is the backend's public WebSocket URL (ws:// or wss://, with
	// path), where assign mode sends clients. If absent, clients are sent to
	// ws://Address:Port/.
	MetaURL = "ws_url"
	// MetaDraining, when "true", means the backend takes no new connections
	// or assignments but keeps the ones it has.
	MetaDraining = "ws_draining"
)

// Assignment is a backend chosen for a client, as a balancer in assign mode
// answers GET /assign (a JSON object with these fields).
type Assignment struct {
	// URL is the backend's public WebSocket URL with the token in its
	// query: what the client opens.
	URL string `json:"url"`
	// Token is the token alone, for clients that send it in an
	// Authorization header instead.
	Token string `json:"token"`
	// ExpiresAt is when the token stops being valid: the client must have
	// connected by then.
	ExpiresAt time.Time `json:"expires_at"`
	// Backend is the backend's ID, the token's audience.
	Backend string `json:"backend"`
}

// Close codes the balancer sends itself (RFC 6455 section 7.4.1).
const (
	// CloseGoingAway: the other side of a relayed connection closed, or
	// the balancer is shutting down, or the connection was idle too long.
	CloseGoingAway = 1001
	// CloseInternalError: the other side of a relayed connection failed.
	CloseInternalError = 1011
	// CloseServiceRestart: the backend is draining, or the balancer moves
	// the connection to rebalance; the client should reconnect.
	CloseServiceRestart = 1012
)
