// Package harness runs the pieces of an integration test for real: the Caddy
// binary with the balancer module (built once per test binary from
// ./cmd/caddy, the same program xcaddy.sh builds), WebSocket echo backends
// and clients, all on loopback, all stopped by t.Cleanup.
package harness
