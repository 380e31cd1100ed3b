// Package wsbackend is what a WebSocket backend behind ws_balancer imports:
// it counts the backend's connections and reports them to every balancer
// through Consul.
//
//   - [Counter] counts live connections: [Counter.Wrap] counts each one a
//     handler takes over, from the hijack until it is closed.
//   - [Register] registers the backend in Consul with a TTL check, keeps it
//     alive and publishes the count, its capacity and its public URL as the
//     service meta keys of package protocol; [Registration.Drain] and
//     [Registration.Close] take it out of rotation.
//   - [Reporter] decides when a count is worth publishing (coarse steps, so
//     that a busy backend does not wake every balancer at each connection).
//     Register uses one; a backend that publishes by other means can use it
//     directly.
//
// Tokens of assign mode are verified with package token (wsbackend/token),
// and the wire contract (meta keys, the /assign answer, close codes) is
// package protocol (wsbackend/protocol), which backends in other languages
// follow from docs/protocol.md. Clients ask a balancer for a backend with
// package client (wsbackend/client).
//
// Nothing here imports the balancer, its relay, Caddy or a WebSocket
// library: besides the standard library, this package imports only
// protocol, internal/retry (backoff), Consul's API client and zap.
package wsbackend
