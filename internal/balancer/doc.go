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
//
// An upgrade flows downward through Proxy.ServeUpgrade, one file per step:
//
//  1. admit (transport.go): pick the client's transport and check its
//     request before any backend is touched;
//  2. choose (choose.go, selection.go, affinity.go): least-loaded, with
//     reservation, retry and 503/Retry-After;
//  3. dial and handshake (dialer.go, handshake.go, handshake_tls.go);
//  4. hand over (proxy.go handOver): open the client's side through its
//     transport and start the relay (relay.go; relay_hybrid_linux.go and
//     evloop_linux.go on Linux).
//
// What differs between an HTTP/1.1 upgrade (hijack and 101,
// transport_hijack.go) and an HTTP/2 extended CONNECT (a stream and 200,
// transport_stream.go) is the clientTransport interface; no other step
// branches on it.
package balancer
