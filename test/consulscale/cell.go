package main

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
)

// result is one measured window of one grid cell.
type result struct {
	n, m     int
	topology string
	window   time.Duration

	publishes   float64 // re-registrations/s sent by the backends
	heartbeats  float64 // TTL updates/s
	raftWrites  float64 // Raft entries/s on the server
	serverCores float64 // the server agent's CPU
	serverRSS   float64 // MiB, highest sample
	agentCores  float64 // the balancers' client agents' CPU, summed (topology clients)
	agentRSS    float64 // MiB, summed, highest sample
	bnodeCores  float64 // the backends' client agents' CPU, summed (topology clients)
	bnodes      int     // backends' client agents
	wakeups     float64 // health answers/s per balancer
	changes     float64 // changes/s per balancer told to subscribers
	bodyBytes   float64 // JSON bytes/s, all balancers
	wireBytes   float64 // bytes/s read from the agent by all balancers
	perEntry    float64 // JSON bytes per answer / n: below a full answer's when instances dropped out
	lat         latencyStats
	minPassing  int   // fewest instances a balancer saw during the window (sampled each second)
	pending     int   // publishes of the window not seen by every balancer after the grace
	unknown     int64 // reports seen that no backend was seen sending (should be 0)

	toolCores   float64
	othersCores float64
	loadStart   string
	loadEnd     string
	start       time.Time
}

func runCell(ctx context.Context, cfg config, tmp string, n, m int) (res result, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dir, err := os.MkdirTemp(tmp, fmt.Sprintf("cell-%d-%d-", n, m))
	if err != nil {
		return res, err
	}
	defer os.RemoveAll(dir)

	// Every agent is killed at the cell's end: dev agents keep nothing, and
	// the others' data directories are removed with the cell's.
	var agents []*consuldev.Agent
	defer func() {
		for _, a := range agents {
			a.Kill()
		}
	}()
	server, err := startAgent(ctx, dir, "server", "", cfg.dev)
	if err != nil {
		return res, err
	}
	agents = append(agents, server)
	backendAddrs := []string{server.Addr()}
	balancerAddrs := make([]string, m)
	for j := range balancerAddrs {
		balancerAddrs[j] = server.Addr()
	}
	// Client agents (topology clients): the backends' nodes, -backends-per-agent
	// backends each, then one per balancer. They start in parallel.
	var backendAgents, balancerAgents []*consuldev.Agent
	if cfg.topology == "clients" {
		join := server.SerfLANAddr()
		k := (n + cfg.perAgent - 1) / cfg.perAgent
		started := make([]*consuldev.Agent, k+m)
		var g errgroup.Group
		g.SetLimit(4)
		for i := range started {
			name := fmt.Sprintf("backends%d", i)
			if i >= k {
				name = fmt.Sprintf("balancer%d", i-k)
			}
			g.Go(func() error {
				a, err := startAgent(ctx, dir, name, join, false)
				started[i] = a
				return err
			})
		}
		err := g.Wait()
		for _, a := range started {
			if a != nil {
				agents = append(agents, a)
			}
		}
		if err != nil {
			return res, err
		}
		backendAgents, balancerAgents = started[:k], started[k:]
		backendAddrs = backendAddrs[:0]
		for _, a := range backendAgents {
			backendAddrs = append(backendAddrs, a.Addr())
		}
		for j, a := range balancerAgents {
			balancerAddrs[j] = a.Addr()
		}
	}

	tr := newTracker(m)
	f, err := startFleet(ctx, backendAddrs, n, cfg.profile, tr, cfg.reg)
	if err != nil {
		return res, fmt.Errorf("registering %d backends: %w", n, err)
	}
	defer f.stop()
	bals := make([]*balancer, m)
	for j := range bals {
		b, err := startBalancer(ctx, j, balancerAddrs[j], tr, cfg.watch)
		if err != nil {
			return res, fmt.Errorf("starting balancer %d: %w", j, err)
		}
		defer b.stop()
		bals[j] = b
		if got := len(b.w.Instances()); got != n {
			// Registrations reach client agents' watchers through the
			// servers; give them a moment.
			deadline := time.Now().Add(10 * time.Second)
			for len(b.w.Instances()) != n && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			if got := len(b.w.Instances()); got != n {
				return res, fmt.Errorf("balancer %d sees %d instances, want %d", j, got, n)
			}
		}
	}

	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(cfg.warmup):
	}

	type snap struct {
		t                                 time.Time
		server, agents, bnode, self, busy float64
		raft                              uint64
		regs, ttl                         int64
		queries, changes, resps           int64
		body, wire                        int64
	}
	take := func() (s snap, err error) {
		s.t = time.Now()
		if s.server, err = cpuSeconds(server.Pid()); err != nil {
			return s, err
		}
		for _, a := range backendAgents {
			c, err := cpuSeconds(a.Pid())
			if err != nil {
				return s, err
			}
			s.bnode += c
		}
		for _, a := range balancerAgents {
			c, err := cpuSeconds(a.Pid())
			if err != nil {
				return s, err
			}
			s.agents += c
		}
		s.self = selfCPU()
		s.busy = machineBusySeconds()
		if s.raft, err = server.LastLogIndex(); err != nil {
			return s, err
		}
		s.regs, s.ttl = f.registers.Load(), f.ttl.Load()
		for _, b := range bals {
			s.queries += b.w.Queries()
			s.changes += b.w.Changes()
			s.resps += b.resps.Load()
			s.body += b.body.Load()
			s.wire += b.wire.Load()
		}
		return s, nil
	}
	res = result{n: n, m: m, topology: cfg.topology, bnodes: len(backendAgents), loadStart: loadAvg()}
	s0, err := take()
	if err != nil {
		return res, err
	}
	res.start = s0.t
	// Sample RSS every second through the window.
	end := s0.t.Add(cfg.window)
	res.minPassing = n
	for time.Now().Before(end) {
		for _, b := range bals {
			res.minPassing = min(res.minPassing, len(b.w.Instances()))
		}
		res.serverRSS = max(res.serverRSS, rssMB(server.Pid()))
		var sum float64
		for _, a := range balancerAgents {
			sum += rssMB(a.Pid())
		}
		res.agentRSS = max(res.agentRSS, sum)
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(min(time.Second, time.Until(end))):
		}
	}
	s1, err := take()
	if err != nil {
		return res, err
	}
	res.loadEnd = loadAvg()
	w := s1.t.Sub(s0.t).Seconds()
	res.window = s1.t.Sub(s0.t)
	res.publishes = float64(s1.regs-s0.regs) / w
	res.heartbeats = float64(s1.ttl-s0.ttl) / w
	res.raftWrites = float64(s1.raft-s0.raft) / w
	res.serverCores = (s1.server - s0.server) / w
	res.agentCores = (s1.agents - s0.agents) / w
	res.bnodeCores = (s1.bnode - s0.bnode) / w
	res.toolCores = (s1.self - s0.self) / w
	res.othersCores = ((s1.busy - s0.busy) - (s1.server - s0.server) - (s1.agents - s0.agents) - (s1.bnode - s0.bnode) - (s1.self - s0.self)) / w
	res.wakeups = float64(s1.resps-s0.resps) / w / float64(m)
	res.changes = float64(s1.changes-s0.changes) / w / float64(m)
	res.bodyBytes = float64(s1.body-s0.body) / w
	res.wireBytes = float64(s1.wire-s0.wire) / w
	if d := s1.resps - s0.resps; d > 0 {
		res.perEntry = float64(s1.body-s0.body) / float64(d) / float64(n)
	}

	// Let the window's last publishes reach every balancer.
	graceEnd := time.Now().Add(cfg.grace)
	for tr.pendingIn(s0.t, s1.t) > 0 && time.Now().Before(graceEnd) {
		time.Sleep(100 * time.Millisecond)
	}
	res.pending = tr.pendingIn(s0.t, s1.t)
	res.lat = tr.stats(s0.t, s1.t)
	tr.mu.Lock()
	res.unknown = tr.unknown
	tr.mu.Unlock()
	if s := server.Logs(); strings.Contains(s, "panic:") {
		return res, fmt.Errorf("consul agent panicked:\n%s", s)
	}
	return res, nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond)) }

func mbps(b float64) string {
	switch {
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MB/s", b/(1<<20))
	default:
		return fmt.Sprintf("%.0f kB/s", b/(1<<10))
	}
}

func (r result) raw() string {
	return fmt.Sprintf("n=%d m=%d topology=%s start=%s window=%.1fs publishes/s=%.1f heartbeats/s=%.1f raft_writes/s=%.1f server_cores=%.3f server_rss=%.0fMiB balancer_agents_cores=%.3f balancer_agents_rss=%.0fMiB backend_agents=%d backend_agents_cores=%.3f wakeups/s/balancer=%.2f changes/s/balancer=%.2f json=%.0fB/s wire=%.0fB/s bytes/entry=%.0f min_passing=%d published=%d complete=%d pending=%d before_return=%d p50=%s p99=%s max=%s write_p50=%s write_p99=%s unknown=%d tool_cores=%.3f others_cores=%.3f load=%s→%s",
		r.n, r.m, r.topology, r.start.Format("15:04:05"), r.window.Seconds(), r.publishes, r.heartbeats, r.raftWrites, r.serverCores, r.serverRSS,
		r.agentCores, r.agentRSS, r.bnodes, r.bnodeCores, r.wakeups, r.changes, r.bodyBytes, r.wireBytes, r.perEntry,
		r.minPassing, r.lat.published, r.lat.complete, r.pending, r.lat.beforeCall, ms(r.lat.p50), ms(r.lat.p99), ms(r.lat.max),
		ms(r.lat.writeP50), ms(r.lat.writeP99), r.unknown, r.toolCores, r.othersCores, r.loadStart, r.loadEnd)
}

func report(cfg config, bin string, cells []cellResult, failures []string, started time.Time) string {
	var b strings.Builder
	server := "consul agent -dev"
	if !cfg.dev {
		server = "single server, Raft on disk"
	}
	fmt.Fprintf(&b, "### Consul scale: %s, %s, topology %s, profile %s\n\n", started.UTC().Format("2006-01-02 15:04 UTC"), server, cfg.topology, cfg.profile.name)
	clients := cfg.topology == "clients"
	b.WriteString("| backends | balancers | publishes/s | Raft writes/s | server CPU (cores) | server RSS |")
	if clients {
		b.WriteString(" balancers' agents CPU (cores, sum) | backends' agents CPU (cores, sum) |")
	}
	b.WriteString(" wake-ups/s per balancer | JSON to watchers | on the wire | B/entry | register call p50 / p99 | fewest passing | publish→all p50 | p99 | seen by all | tool CPU | others' CPU | load |\n")
	b.WriteString("|---:|---:|---:|---:|---:|---:|")
	if clients {
		b.WriteString("---:|---:|")
	}
	b.WriteString("---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range cells {
		r := c.best()
		fmt.Fprintf(&b, "| %d | %d | %.1f | %.1f | %.2f | %.0f MiB |", r.n, r.m, r.publishes, r.raftWrites, r.serverCores, r.serverRSS)
		if clients {
			fmt.Fprintf(&b, " %.2f | %.2f |", r.agentCores, r.bnodeCores)
		}
		fmt.Fprintf(&b, " %.2f | %s | %s | %.0f | %s / %s | %d | %s | %s | %d/%d | %.2f | %.2f | %s |\n",
			r.wakeups, mbps(r.bodyBytes), mbps(r.wireBytes), r.perEntry, ms(r.lat.writeP50), ms(r.lat.writeP99), r.minPassing, ms(r.lat.p50), ms(r.lat.p99),
			r.lat.complete, r.lat.published, r.toolCores, r.othersCores, r.loadEnd)
	}
	if len(failures) > 0 {
		b.WriteString("\nAttempts that could not be measured:\n\n")
		for _, f := range failures {
			fmt.Fprintf(&b, "- %s\n", f)
		}
	}
	b.WriteString("\nRaw lines (every attempt; the table shows, per cell, the least disturbed attempt in which every instance stayed passing and publishes were seen, else the least disturbed):\n\n```\n")
	for _, c := range cells {
		for _, r := range c.attempts {
			b.WriteString(r.raw())
			b.WriteString("\n")
		}
	}
	b.WriteString("```\n\n")
	args := slices.Clone(os.Args[1:])
	fmt.Fprintf(&b, "- command: `go run ./test/consulscale %s`\n", strings.Join(args, " "))
	fmt.Fprintf(&b, "- Consul: %s\n", bin)
	fmt.Fprintf(&b, "- churn: mean %.0f connections per backend, random walk %.1f%%/√s, reverting %.3f/s, bursts every %s of %.0f%%; warm-up %s, window %s\n",
		cfg.profile.mean, cfg.profile.sigma*100, cfg.profile.revert, cfg.profile.burstMean, cfg.profile.burst*100, cfg.warmup, cfg.window)
	cons := cfg.watch.consistency
	if cons == "" {
		cons = "default"
	}
	fmt.Fprintf(&b, "- balancers: consistency %s, ?cached %v, gzip %v, rate %v/s (0: default 2), burst %d (0: default 2); backends: MinPublishInterval %v, Threshold %v, RefreshAfter %v (0: library defaults 2s, 0.10, 30s)\n",
		cons, cfg.watch.cached, !cfg.watch.noGzip, float64(cfg.watch.rate), cfg.watch.burst, cfg.reg.MinPublishInterval, cfg.reg.Threshold, cfg.reg.RefreshAfter)
	fmt.Fprintf(&b, "- machine: %s; load average at the end %s; total time %s\n", machine(), loadAvg(), time.Since(started).Round(time.Second))
	return b.String()
}
