// Package wsbackend is the Caddy-free core of the WebSocket balancer: the
// shared per-backend state (live connection counts, reported load, passive
// health), the pool a handler chooses from, least-loaded selection, and the
// proxy that completes a WebSocket handshake through the chosen backend and
// relays raw bytes afterwards; the Assigner of assign mode, which hands
// clients a backend's URL and a token instead (with AssignAndDial, its Go
// client); and the library backends use to count and report their
// connections.
//
// Nothing here imports Caddy, so the same code serves the Caddy module in
// caddymodule, the benchmarks and tests, and any other Go program.
package balancer
