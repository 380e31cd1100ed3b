package main

import (
	"context"
	"path/filepath"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
)

// agentHCL is what the study adds to consuldev's agent configuration
// (loopback only, no update check, no script checks, quiet logs): a
// per-client HTTP connection limit above the default 200, because every
// simulated backend and balancer connects from 127.0.0.1 (in production
// each has its own address). check_update_interval is Consul's default,
// stated so that the study does not depend on it: a TTL heartbeat whose
// output alone changed is synced to the servers at most every 5 minutes.
const agentHCL = `advertise_addr = "127.0.0.1"
check_update_interval = "5m"
limits {
  http_max_conns_per_client = 10000
}
`

// startAgent starts the server (join == "") or a client agent joined to the
// server's serf LAN address join, in its own directory under dir, and waits
// until it knows a leader and its own node is in the catalog.
//
// With dev false the server is not a dev agent but a single server
// (bootstrap_expect = 1) that keeps its Raft log on disk, as production
// servers do; a dev agent also pretty-prints every JSON answer, about
// doubling what watchers read.
func startAgent(ctx context.Context, dir, name, join string, dev bool) (*consuldev.Agent, error) {
	return consuldev.Launch(ctx, consuldev.LaunchOptions{
		Dir: filepath.Join(dir, name), Name: name, Join: join, Dev: dev, HCL: agentHCL,
	})
}
