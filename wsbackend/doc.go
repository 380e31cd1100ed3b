// Package wsbackend is the Caddy-free core of the WebSocket balancer: the
// shared per-backend state (live connection counts, reported load, passive
// health), the pool a handler chooses from, least-loaded selection, and the
// proxy that completes a WebSocket handshake through the chosen backend and
// relays raw bytes afterwards.
//
// Nothing here imports Caddy, so the same code serves the Caddy module in
// caddymodule, the benchmarks and tests, and any other Go program.
package wsbackend
