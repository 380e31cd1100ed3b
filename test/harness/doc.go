// Package harness runs the pieces of an integration test for real: the Caddy
// binary with the balancer module (built once per test binary from
// ./cmd/caddy, the same program xcaddy.sh builds), WebSocket echo backends
// and clients, all on loopback, all stopped by t.Cleanup.
//
// Tests built on it cannot pass by looking away: a child process that
// races, panics or ends abnormally fails the test that started it (see
// Process), and a test whose dependency is missing fails under CI instead of
// skipping (see Require).
package harness
