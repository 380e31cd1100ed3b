// Package consultest is a Consul-compatible test agent: an in-process HTTP
// server answering the part of Consul's HTTP API that this project calls,
// with Consul's own semantics, so that code written against
// github.com/hashicorp/consul/api can be tested where no Consul binary can be
// installed. Use it like net/http/httptest:
//
//	a := consultest.New(consultest.Options{CheckUpdateInterval: -1})
//	if err := a.Start("127.0.0.1:0"); err != nil { ... }
//	defer a.Close()
//	client, _ := api.NewClient(&api.Config{Address: a.Addr()})
//
// It is a TEST DOUBLE, not Consul, for tests and local demos only. Every
// response carries the header X-Consul-Test-Double.
//
// # What it models
//
// The agent keeps two layers, as a real client agent does: its local state
// (what /v1/agent/services and /v1/agent/checks show) and the catalog held by
// the servers (what /v1/health and /v1/catalog show). Every API call updates
// the local state and then syncs it to the catalog the way Consul's
// anti-entropy does; each sync that a real agent would send to the servers
// counts as one server (Raft) write, see [Agent.ServerWrites].
//
//   - Blocking queries: index and wait, default wait 5m, at most 10m, plus up
//     to wait/16 of jitter. Indexes are Consul's: one per service name,
//     bumped by any change to any instance or check of that name (so every
//     write wakes every watcher of the service, consul#3890); an unknown
//     service reports the last "extinction" index or the catalog's max index.
//   - TTL checks: initial status critical unless given, TTL reset on every
//     update, "TTL expired" output on expiry, output capped at 4096 bytes.
//   - check_update_interval (consul#9113): an update that changes only the
//     output is held by the agent and reaches the catalog after d/2 plus a
//     random part of d, d being [Options.CheckUpdateInterval]; status changes
//     sync at once.
//   - deregister_critical_service_after, with Consul's one-minute minimum and
//     a reaper that runs every [Options.ReapInterval].
//   - Service maintenance mode, service meta validation, re-registration that
//     keeps check status and output (and restarts TTLs).
//   - ACLs with one management token and Consul's default-deny anonymous
//     token: wrong tokens get 403 "ACL not found", anonymous writes get 403
//     "Permission denied", anonymous reads of lists come back empty with
//     X-Consul-Results-Filtered-By-ACLs: true, exactly as Consul answers.
//
// # Time and outages
//
// The agent's timers run on [Options.Now]. With an injected clock, move it
// and call [Agent.Tick] to fire what became due, so tests need not sleep.
// [Agent.Stop] and [Agent.Restart] take the listener down and bring it back
// on the same address, as when an agent is unreachable for a while: the
// agent's state and timers carry on meanwhile.
//
// # What it does not model
//
// Only TTL checks (no HTTP, TCP, gRPC, script or alias checks: registering
// one fails with 400), no ?filter expressions (400), no KV, sessions,
// Connect, namespaces, partitions, prepared queries, node maintenance, agent
// cache semantics (?cached is accepted and ignored), or the periodic full
// anti-entropy sync. There is one node and one datacenter; other datacenters
// answer 500 "No path to datacenter".
package consultest
