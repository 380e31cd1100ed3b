// Package consul discovers WebSocket backends in Consul for the balancer.
//
// A [Watcher] follows one service's passing instances with blocking queries
// (GET /v1/health/service/:name?passing) and tells its subscribers when the
// set, or anything the balancer reads from it, changes. A [Source] turns each
// set into the [balancer.Upstream]s a proxy chooses from, and feeds the load
// every backend publishes in its service meta (the keys of package
// protocol: ws_connections, ws_counted_at, ws_capacity, ws_url, ws_draining)
// into the shared [balancer.Backend] state.
//
// # Blocking-query discipline
//
// The loop follows Consul's rules for blocking queries:
//
//   - Each query sends the last X-Consul-Index seen and a wait time. A return
//     is not a change: the new set is compared with the last one, and
//     subscribers hear only of real changes.
//   - If the index goes backwards (a server restored from a snapshot, a
//     reset agent), it is reset to 0: the next query does not block and
//     returns the current state. An index of 0 returned by Consul is treated
//     as 1, so that a buggy answer cannot turn the loop into a busy poll.
//   - The loop is rate limited by a token bucket (by default 2 queries per
//     second, burst 2): frequent writes to the service, which wake every
//     watcher of it (consul#3890), are batched instead of answered one by
//     one, while a change after a quiet period is seen at once.
//   - Errors are retried with exponential backoff and jitter (by default
//     from 500ms, doubling, capped at 10s, each delay drawn in [d/2, d)).
//     After an error the next query starts again from index 0, so that the
//     state Consul holds when it returns is read at once.
//   - An outage is logged once, when it starts, and its end once, with its
//     length and the number of failed attempts; the last known set is kept
//     meanwhile.
//
// Nothing here imports Caddy: caddymodule wires it to Caddy's lifecycle.
package consul
