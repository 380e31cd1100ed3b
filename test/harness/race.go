//go:build race

package harness

// raceEnabled builds Caddy with the race detector when the tests run with it,
// so that races in the module inside the Caddy process are caught too.
const raceEnabled = true
