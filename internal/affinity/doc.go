// Package affinity chooses a backend for a key (a chat room, a match, a
// tenant) so that the key's connections gather on one backend while no
// backend carries more than its share of the global load: consistent hashing
// with bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing
// with Bounded Loads", SODA 2018).
//
// A Ring is built from backend IDs only, so every balancer process that sees
// the same backends maps a key to the same backend without talking to the
// others. Ring.Pick walks clockwise from the key's hash and takes the first
// eligible backend whose load is below its bound,
//
//	bound_i = ⌈c · (total + 1) · w_i / Σw⌉
//
// where c is the balance factor, total the sum of the eligible backends'
// loads and w_i their weights (all 1 unless capacities are known, which
// reduces to the paper's ⌈c · (total + 1) / n⌉). Loads are the caller's
// global view: the count a backend last reported plus what this balancer
// opened since, that part scaled by ScaledLoad: when several balancers each
// add only their own connections to a stale report, a hot key's backend
// overshoots the bound until the next report (docs/affinity.md measures it,
// and Options.OwnBound is the other remedy).
//
// LeastLoaded is the keyless counterpart: least connections by load ÷ weight.
// Callers use it when the key is empty, since Pick would send every keyless
// connection to the one backend that owns the empty string's hash.
//
// Cookies names a backend in an opaque, unforgeable sticky-cookie value.
//
// Nothing here does I/O or imports Caddy: the package is pure functions over
// immutable values, for the handler to call and for tests to table.
package affinity
