// Package balancer is the Caddy-free core of the WebSocket balancer: the
// shared per-backend state (live connection counts, reported load, passive
// health), the pool a handler chooses from, least-loaded selection, and the
// proxy that completes a WebSocket handshake through the chosen backend and
// relays raw bytes afterwards (a goroutine pair, or the epoll event loop on
// Linux); and the Assigner of assign mode, which hands clients a backend's
// URL and a token instead.
//
// Arrows point one way: caddymodule (the Caddy glue) and consul (discovery)
// import this package; it imports the wire contract (wsbackend/protocol,
// wsbackend/token) and internal/affinity, never Caddy and never the backend
// library (wsbackend). It is internal because its API serves the glue, not
// users: backend authors import wsbackend, clients wsbackend/client.
package balancer
