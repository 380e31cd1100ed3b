// Command bench measures WebSocket proxies on this machine: the ws_balancer
// Caddy handler against stock Caddy reverse_proxy (same binary), HAProxy and
// nginx (when installed), and direct connections to the echo backend.
//
//	go run ./test/bench [-targets direct,ws_balancer,reverse_proxy,haproxy,nginx]
//	    [-conns 8000] [-dial-concurrency 200] [-rounds 5] [-msg-size 64]
//	    [-reps 3] [-caddy PATH] [-out FILE] [-timeout 10m]
//
// For each repetition and target (round robin, the starting target rotating
// per repetition) it starts the proxy fresh, waits until it answers, warms
// it up, then opens -conns WebSocket connections through it, runs -rounds
// echo rounds and one ping/pong round with all of them held, and reads the
// proxy's RSS and CPU from /proc. It prints medians over repetitions as a
// Markdown table, the ratios of ws_balancer to the other proxies, the raw
// per-repetition lines, the machine and the command line.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

type config struct {
	role, listen, guardLog string

	targets      string
	conns        int
	dialConc     int
	rounds       int
	msgSize      int
	reps         int
	backends     int
	srcIPs       int
	warmup       int
	settle       time.Duration
	caddy        string
	haproxy      string
	nginx        string
	out          string
	timeout      time.Duration
	phaseTimeout time.Duration
	keep         bool
	redo         int
	maxOthers    float64
	waitIdle     time.Duration
	idleCores    float64
	tls          bool
	tlsGroups    string
	profile      string
	baseCaddy    string
}

func main() {
	var cfg config
	flag.StringVar(&cfg.role, "role", "", "internal: 'backend' runs the echo backend child, 'guard' a proxy's guard")
	flag.StringVar(&cfg.guardLog, "log", "", "internal (role guard): output file of the guarded command")
	flag.StringVar(&cfg.listen, "listen", "127.0.0.1:0,127.0.0.1:0", "internal (role backend): comma-separated listen addresses")
	flag.StringVar(&cfg.targets, "targets", strings.Join(allTargets, ","), "comma-separated targets: "+strings.Join(allTargets, ", "))
	flag.IntVar(&cfg.conns, "conns", 8000, "WebSocket connections held at once per target and repetition")
	flag.IntVar(&cfg.dialConc, "dial-concurrency", 200, "handshakes in flight at once")
	flag.IntVar(&cfg.rounds, "rounds", 5, "echo rounds (every connection sends one message and waits for its echo)")
	flag.IntVar(&cfg.msgSize, "msg-size", 64, "echo message size in bytes")
	flag.IntVar(&cfg.reps, "reps", 3, "repetitions per target (interleaved across targets)")
	flag.IntVar(&cfg.backends, "backends", 2, "echo backend ports (one child process)")
	flag.IntVar(&cfg.srcIPs, "src-ips", 16, "client source addresses 127.0.0.2 .. 127.0.0.(1+n)")
	flag.IntVar(&cfg.warmup, "warmup", 100, "connections opened, echoed and closed before the RSS/CPU baseline")
	flag.DurationVar(&cfg.settle, "settle", time.Second, "pause after the warm-up before the baseline is read")
	flag.StringVar(&cfg.caddy, "caddy", "", "custom Caddy binary (default: go build ./cmd/caddy into a temp dir)")
	flag.StringVar(&cfg.baseCaddy, "base-caddy", "", "another Caddy binary with the ws_balancer module, measured as the target "+tWSBalancerBase+" (added to -targets): a before/after comparison in one interleaved run")
	flag.StringVar(&cfg.haproxy, "haproxy", "", "haproxy binary (default: from PATH or /usr/sbin)")
	flag.StringVar(&cfg.nginx, "nginx", "", "nginx binary (default: from PATH or /usr/sbin)")
	flag.StringVar(&cfg.out, "out", "", "also write the report to this file")
	flag.DurationVar(&cfg.timeout, "timeout", 10*time.Minute, "overall time limit, Caddy build included")
	flag.DurationVar(&cfg.phaseTimeout, "phase-timeout", 2*time.Minute, "time limit of each phase (connect, each echo round, ping round)")
	flag.DurationVar(&cfg.waitIdle, "wait-idle", 20*time.Second, "before each measurement, wait up to this long for other processes to use less than -idle-cores")
	flag.Float64Var(&cfg.idleCores, "idle-cores", 0.2, "CPU cores other processes may use for the machine to count as idle")
	flag.IntVar(&cfg.redo, "redo-disturbed", 2, "measure a target's repetition again, up to this many times, when other processes used more than -max-others cores during it")
	flag.Float64Var(&cfg.maxOthers, "max-others", 0.25, "CPU cores other processes may use during a measurement before it counts as disturbed")
	flag.BoolVar(&cfg.keep, "keep", false, "keep the temp dir (configs, proxy logs)")
	flag.BoolVar(&cfg.tls, "tls", false, "clients connect to the proxies over TLS (wss://), every proxy serving the same self-signed certificate with TLS 1.2-1.3 and "+tlsCipherSuite+"; backends stay plain, direct stays ws://")
	flag.StringVar(&cfg.tlsGroups, "tls-groups", "X25519", "key exchange groups the TLS client offers, comma-separated (X25519, P256, X25519MLKEM768; 'default': Go's defaults, which only Caddy meets with X25519MLKEM768)")
	flag.StringVar(&cfg.profile, "profile", "", "write profiles of every proxy repetition into this directory: perf record of the connect and echo phases, Go heap/alloc/goroutine profiles of Caddy (perturbs the figures)")
	flag.Parse()

	switch cfg.role {
	case "backend":
		os.Exit(runBackend(cfg.listen))
	case "guard":
		os.Exit(runGuard(cfg.guardLog, flag.Args()))
	}
	if cfg.role != "" {
		fmt.Fprintf(os.Stderr, "unknown -role %q\n", cfg.role)
		os.Exit(2)
	}
	os.Exit(runBench(cfg))
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%s] "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func jsonDecode(resp *http.Response, v any) error {
	return json.NewDecoder(resp.Body).Decode(v)
}

// repResult is one target in one repetition.
type repResult struct {
	Target string
	Rep    int
	Err    string

	Conns, ConnOK, ConnFail int
	ConnectWall             time.Duration
	DialP50, DialP99        time.Duration

	EchoOK, EchoFail int
	EchoWall         time.Duration
	EchoP50, EchoP99 time.Duration

	PingOK, PingFail int
	PingP50, PingP99 time.Duration

	HasProc                        bool // a proxy process was measured
	RSSBase, RSSConnected, RSSHeld int64
	CPU                            float64 // proxy CPU s, baseline to end of ping round
	CPUConnect                     float64 // part of CPU used by the connect phase
	Procs                          int
	BackendCPU, ClientCPU          float64
	BackendCPUEcho, ClientCPUEcho  float64 // part used by the echo and ping rounds
	OtherCPU, Window               float64 // CPU s used by other processes of the machine during the measured window (s)
	TopOthers                      []string
	Balance                        []int64
	Undrained                      int64  // backend connections left 30 s after the client closed
	Goroutines                     int    // Caddy's goroutines with all connections held (0: not Caddy)
	TLS                            string // what the connections negotiated (-tls)
	Errors                         []string
}

func (r *repResult) connectsPerSec() float64 {
	if r.ConnectWall <= 0 {
		return 0
	}
	return float64(r.ConnOK) / r.ConnectWall.Seconds()
}

func (r *repResult) msgPerSec() float64 {
	if r.EchoWall <= 0 {
		return 0
	}
	return float64(r.EchoOK) / r.EchoWall.Seconds()
}

func (r *repResult) rssPerConn() float64 {
	if !r.HasProc || r.ConnOK == 0 {
		return 0
	}
	return float64(r.RSSHeld-r.RSSBase) / float64(r.ConnOK)
}

// others returns the CPU cores used by the machine's other processes during
// the measured window.
func (r *repResult) others() float64 {
	if r.Window <= 0 {
		return 0
	}
	return r.OtherCPU / r.Window
}

func (r *repResult) failures() int {
	return r.ConnFail + r.EchoFail + r.PingFail
}

func runBench(cfg config) int {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	ctx, stopSig := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stopSig()
	ctx, cancelCause := context.WithCancelCause(ctx)
	defer cancelCause(nil)
	defer killAll()
	// Stop when the parent goes away (e.g. `go run` killed by SIGTERM, which
	// it does not forward to this process).
	go func() {
		ppid := os.Getppid()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != ppid {
					cancelCause(errors.New("parent process exited"))
					return
				}
			}
		}
	}()

	if cfg.conns < 1 || cfg.reps < 1 || cfg.rounds < 0 || cfg.msgSize < 1 || cfg.backends < 1 {
		logf("invalid flags: -conns, -reps, -msg-size and -backends must be >= 1, -rounds >= 0")
		return 2
	}
	soft, hard, err := raiseNofile()
	if err != nil {
		logf("raising RLIMIT_NOFILE: %v", err)
		return 1
	}
	logf("RLIMIT_NOFILE soft=%d hard=%d (children inherit it)", soft, hard)
	if uint64(cfg.conns+cfg.warmup+300) > soft {
		logf("-conns %d too large: the client holds one fd per connection, limit %d", cfg.conns, soft)
		return 2
	}
	if uint64(2*cfg.conns+200) > soft {
		logf("warning: a proxy holds 2 fds per connection: -conns %d may exceed its limit %d", cfg.conns, soft)
	}

	var targets []string
	for _, t := range strings.Split(cfg.targets, ",") {
		t = strings.TrimSpace(t)
		if t == "" {
			continue
		}
		if !contains(knownTargets, t) {
			logf("unknown target %q (known: %s)", t, strings.Join(knownTargets, ", "))
			return 2
		}
		targets = append(targets, t)
	}
	if cfg.baseCaddy != "" && !contains(targets, tWSBalancerBase) {
		targets = append(targets, tWSBalancerBase)
	}

	workdir, err := os.MkdirTemp("", "wsbench-")
	if err != nil {
		logf("%v", err)
		return 1
	}
	if cfg.keep {
		logf("temp dir (kept): %s", workdir)
	} else {
		defer os.RemoveAll(workdir)
	}

	// Resolve the binaries; skip the targets that cannot run, saying why.
	var tl tools
	if cfg.tls {
		if tl.tls, err = writeSelfSigned(workdir); err != nil {
			logf("making the TLS certificate: %v", err)
			return 1
		}
	}
	skipped := map[string]string{}
	wantCaddy := contains(targets, tWSBalancer) || contains(targets, tReverseProxy)
	if wantCaddy {
		if cfg.caddy != "" {
			tl.caddy = cfg.caddy
		} else {
			logf("building ./cmd/caddy ...")
			tl.caddy, err = buildCaddy(ctx, workdir)
			if err != nil {
				logf("cannot build the Caddy binary: %v", err)
			}
		}
		if tl.caddy == "" {
			for _, t := range []string{tWSBalancer, tReverseProxy} {
				skipped[t] = "no Caddy binary (go build ./cmd/caddy failed; pass -caddy PATH)"
			}
		} else if contains(targets, tWSBalancer) {
			ok, err := caddyHasModule(ctx, tl.caddy, "ws_balancer")
			switch {
			case err != nil:
				skipped[tWSBalancer] = err.Error()
			case !ok:
				skipped[tWSBalancer] = "the Caddy binary " + tl.caddy + " has no ws_balancer module"
			}
		}
	}
	if contains(targets, tHAProxy) {
		tl.haproxy = cfg.haproxy
		if tl.haproxy == "" {
			tl.haproxy = lookBin("haproxy")
		}
		if tl.haproxy == "" {
			skipped[tHAProxy] = "haproxy is not installed (not in PATH nor /usr/sbin; apt-get install -y haproxy)"
		}
	}
	if contains(targets, tNginx) {
		tl.nginx = cfg.nginx
		if tl.nginx == "" {
			tl.nginx = lookBin("nginx")
		}
		if tl.nginx == "" {
			skipped[tNginx] = "nginx is not installed (not in PATH nor /usr/sbin; apt-get install -y nginx)"
		}
	}
	if contains(targets, tWSBalancerBase) {
		tl.baseCaddy = cfg.baseCaddy
		if tl.baseCaddy == "" {
			skipped[tWSBalancerBase] = "no -base-caddy binary"
		} else if ok, err := caddyHasModule(ctx, tl.baseCaddy, "ws_balancer"); err != nil || !ok {
			skipped[tWSBalancerBase] = fmt.Sprintf("%s has no ws_balancer module (%v)", tl.baseCaddy, err)
		}
	}
	for _, b := range []struct {
		path    *string
		targets []string
	}{{&tl.caddy, []string{tWSBalancer, tReverseProxy}}, {&tl.baseCaddy, []string{tWSBalancerBase}}, {&tl.haproxy, []string{tHAProxy}}, {&tl.nginx, []string{tNginx}}} {
		if *b.path == "" {
			continue
		}
		if abs, err := filepath.Abs(*b.path); err == nil {
			*b.path = abs
		}
		if st, err := os.Stat(*b.path); err != nil || st.IsDir() {
			for _, t := range b.targets {
				if _, ok := skipped[t]; !ok {
					skipped[t] = fmt.Sprintf("%s: not an executable file", *b.path)
				}
			}
		}
	}
	var run []string
	for _, t := range targets {
		if why, ok := skipped[t]; ok {
			logf("SKIP %s: %s", t, why)
			continue
		}
		run = append(run, t)
	}
	if len(run) == 0 {
		logf("no target can run")
		return 1
	}

	var listen []string
	for i := 0; i < cfg.backends; i++ {
		listen = append(listen, "127.0.0.1:0")
	}
	be, err := startBackend(ctx, strings.Join(listen, ","), workdir+"/backend.log")
	if err != nil {
		logf("echo backend: %v", err)
		return 1
	}
	defer be.stop()
	logf("echo backend pid %d on %s", be.pid(), strings.Join(be.addrs, " "))

	tlsCfg, err := clientTLSConfig(cfg.tlsGroups)
	if err != nil {
		logf("%v", err)
		return 2
	}
	if cfg.profile != "" {
		if err := os.MkdirAll(cfg.profile, 0o755); err != nil {
			logf("%v", err)
			return 1
		}
	}
	lc := newLoadClient(cfg.srcIPs, 10*time.Second, tlsCfg)
	bc := &backendClient{hc: &http.Client{Timeout: 5 * time.Second}, url: "http://" + be.addrs[0] + "/stats"}

	var results, discarded []*repResult
	interrupted := ""
reps:
	for rep := 0; rep < cfg.reps; rep++ {
		for k := range run {
			t := run[(rep+k)%len(run)]
			if ctx.Err() != nil {
				interrupted = fmt.Sprintf("stopped early (%v) in repetition %d before %s", context.Cause(ctx), rep+1, t)
				break reps
			}
			for attempt := 0; ; attempt++ {
				logf("rep %d/%d: %s ...", rep+1, cfg.reps, t)
				r := runOne(ctx, cfg, t, rep, tl, workdir, be, lc, bc, soft)
				logf("rep %d/%d: %s", rep+1, cfg.reps, rawLine(r))
				if others := r.others(); r.Err == "" && others > cfg.maxOthers && attempt < cfg.redo && ctx.Err() == nil {
					logf("rep %d/%d: %s disturbed (other processes used %.2f cores): measuring it again", rep+1, cfg.reps, t, others)
					discarded = append(discarded, r)
					continue
				}
				results = append(results, r)
				break
			}
		}
	}
	if interrupted != "" {
		logf("%s", interrupted)
	}

	rep := report(cfg, run, skipped, results, discarded, tl, soft, hard, time.Since(start), interrupted)
	fmt.Print(rep)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(rep), 0o644); err != nil {
			logf("writing %s: %v", cfg.out, err)
			return 1
		}
		logf("report written to %s", cfg.out)
	}
	for _, r := range results {
		if r.Err != "" || r.failures() > 0 {
			return 1
		}
	}
	if interrupted != "" {
		return 1
	}
	return 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// runOne measures one target once.
func runOne(ctx context.Context, cfg config, target string, rep int, tl tools, workdir string,
	be *backendProc, lc *loadClient, bc *backendClient, nofile uint64) *repResult {
	r := &repResult{Target: target, Rep: rep + 1, Conns: cfg.conns}
	fail := func(format string, args ...any) *repResult {
		r.Err = fmt.Sprintf(format, args...)
		return r
	}

	if n, err := bc.waitActive(ctx, 0, 30*time.Second); err != nil {
		return fail("backend not idle before the start (%d connections): %v", n, err)
	}
	if cfg.waitIdle > 0 {
		if busy, waited, idle := waitIdle(ctx, cfg.waitIdle, cfg.idleCores, be.pid()); !idle {
			logf("machine busy: other processes use %.2f cores after waiting %v; measuring anyway", busy, waited.Round(time.Second))
		} else if waited > 2*time.Second {
			logf("waited %v for other processes to calm down", waited.Round(time.Second))
		}
	}

	var p *proxyProc
	var urls []string
	if target == tDirect {
		for _, a := range be.addrs {
			urls = append(urls, "ws://"+a+"/")
		}
	} else {
		var err error
		p, err = startProxy(target, tl, workdir, be.addrs, nofile, rep+1)
		if err != nil {
			return fail("start: %v", err)
		}
		defer p.stop()
		if err := p.waitReady(ctx, lc, 30*time.Second); err != nil {
			return fail("%v", err)
		}
		urls = []string{p.url()}
		r.HasProc = true
	}

	// Warm-up: a few connections, one echo each, closed; then wait until the
	// backend saw them all close and let the proxy settle.
	if cfg.warmup > 0 {
		wctx, cancel := context.WithTimeout(ctx, cfg.phaseTimeout)
		w := connectAll(wctx, lc, urls, cfg.warmup, min(cfg.dialConc, cfg.warmup))
		er := echoRounds(wctx, w.conns, 1, cfg.msgSize, cfg.phaseTimeout)
		closeAll(w.conns)
		cancel()
		if w.fail > 0 || er.fail > 0 {
			return fail("warm-up: %d connect and %d echo failures: %s %s", w.fail, er.fail, w.errs.String(), er.errs.String())
		}
		if n, err := bc.waitActive(ctx, 0, 30*time.Second); err != nil {
			return fail("after warm-up the backend still holds %d connections: %v", n, err)
		}
		select {
		case <-time.After(cfg.settle):
		case <-ctx.Done():
			return fail("%v", ctx.Err())
		}
	}

	var base groupStats
	if p != nil {
		var err error
		if base, err = readGroupStats(p.pid()); err != nil {
			return fail("baseline: %v", err)
		}
		r.RSSBase = base.RSS
	}
	prof := newProfiler(cfg.profile, target, rep+1, p)
	prof.pprof("allocs", "allocs-base.pb.gz")
	stopPerf := func() {}
	if p != nil {
		stopPerf = prof.perfRecord("connect", p.pid())
	}
	beBase, _ := readGroupStats(be.pid())
	clientBase := selfCPU()
	sysBase, winStart, snapBase := systemBusyCPU(), time.Now(), snapshotProcs()

	// Connect phase.
	cctx, cancel := context.WithTimeout(ctx, cfg.phaseTimeout)
	cr := connectAll(cctx, lc, urls, cfg.conns, cfg.dialConc)
	cancel()
	stopPerf()
	r.TLS = negotiated(cr.conns)
	defer closeAll(cr.conns)
	stopUnblock := unblockOnCancel(ctx, cr.conns)
	defer stopUnblock()
	r.ConnOK, r.ConnFail, r.ConnectWall = cr.ok, cr.fail, cr.wall
	r.DialP50, r.DialP99 = percentile(cr.lat, 50), percentile(cr.lat, 99)
	if s := cr.errs.String(); s != "" {
		r.Errors = append(r.Errors, "connect: "+s)
	}
	if ctx.Err() != nil {
		return fail("interrupted during the connect phase: %v", context.Cause(ctx))
	}
	if s, err := bc.stats(ctx); err == nil {
		r.Balance = s.Active
	}
	beMid, _ := readGroupStats(be.pid())
	clientMid := selfCPU()
	if p != nil {
		if gs, err := readGroupStats(p.pid()); err == nil {
			r.RSSConnected, r.CPUConnect = gs.RSS, gs.CPU-base.CPU
		}
		prof.pprof("allocs", "allocs-connected.pb.gz")
		stopPerf = prof.perfRecord("echo", p.pid())
	}

	// Echo rounds, then the ping round, all connections held.
	er := echoRounds(ctx, cr.conns, cfg.rounds, cfg.msgSize, cfg.phaseTimeout)
	r.EchoOK, r.EchoFail, r.EchoWall = er.ok, er.fail, er.wall
	r.EchoP50, r.EchoP99 = percentile(er.lat, 50), percentile(er.lat, 99)
	if s := er.errs.String(); s != "" {
		r.Errors = append(r.Errors, "echo: "+s)
	}
	pr := pingRound(ctx, cr.conns, cfg.phaseTimeout)
	r.PingOK, r.PingFail = pr.ok, pr.fail
	r.PingP50, r.PingP99 = percentile(pr.lat, 50), percentile(pr.lat, 99)
	if s := pr.errs.String(); s != "" {
		r.Errors = append(r.Errors, "ping: "+s)
	}

	stopPerf()
	if ctx.Err() != nil {
		return fail("interrupted during the echo/ping rounds: %v", context.Cause(ctx))
	}
	if p != nil {
		gs, err := readGroupStats(p.pid())
		if err != nil {
			return fail("after the run: %v; log tail:\n%s", err, p.logTail(15))
		}
		r.RSSHeld, r.CPU, r.Procs = gs.RSS, gs.CPU-base.CPU, gs.NProcs
		r.Goroutines = caddyGoroutines(p.adminPort)
		prof.pprof("allocs", "allocs-held.pb.gz")
		prof.pprof("heap", "heap.pb.gz")
		prof.pprof("heap?debug=1", "heap.txt") // ends with runtime.MemStats
		prof.pprof("goroutine?debug=1", "goroutine.txt")
	}
	if gs, err := readGroupStats(be.pid()); err == nil {
		r.BackendCPU, r.BackendCPUEcho = gs.CPU-beBase.CPU, gs.CPU-beMid.CPU
	}
	clientEnd := selfCPU()
	r.ClientCPU, r.ClientCPUEcho = clientEnd-clientBase, clientEnd-clientMid
	r.Window = time.Since(winStart).Seconds()
	r.OtherCPU = max(0, systemBusyCPU()-sysBase-r.CPU-r.BackendCPU-r.ClientCPU)
	if r.others() > 0.1 {
		ours := map[int]bool{be.pid(): true, syscall.Getpgrp(): true}
		if p != nil {
			ours[p.pid()] = true
		}
		r.TopOthers = topOthers(snapBase, snapshotProcs(), ours, 3)
	}

	stopUnblock()
	closeAll(cr.conns)
	if n, err := bc.waitActive(ctx, 0, 30*time.Second); err != nil {
		r.Undrained = n
	}
	if p != nil {
		select {
		case <-p.exited:
			return fail("%s exited during the run (%v); log tail:\n%s", target, p.waitErr, p.logTail(15))
		default:
		}
	}
	return r
}

// waitIdle waits, up to maxWait, until the processes other than this one and
// the backend use less than `cores` CPU cores over a 1 s sample. It returns
// the last sample, the time waited and whether the machine became idle.
func waitIdle(ctx context.Context, maxWait time.Duration, cores float64, bePid int) (float64, time.Duration, bool) {
	start := time.Now()
	ours := func() float64 {
		gs, _ := readGroupStats(bePid)
		return selfCPU() + gs.CPU
	}
	for {
		sys0, our0, t0 := systemBusyCPU(), ours(), time.Now()
		select {
		case <-ctx.Done():
			return 0, time.Since(start), false
		case <-time.After(time.Second):
		}
		busy := (systemBusyCPU() - sys0 - (ours() - our0)) / time.Since(t0).Seconds()
		if busy < cores {
			return busy, time.Since(start), true
		}
		if time.Since(start) >= maxWait {
			return busy, time.Since(start), false
		}
	}
}

// ------------------------------------------------------------------ report

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

func rawLine(r *repResult) string {
	var b strings.Builder
	fmt.Fprintf(&b, "rep=%d target=%s", r.Rep, r.Target)
	if r.Err != "" {
		fmt.Fprintf(&b, " ERROR: %s", strings.ReplaceAll(r.Err, "\n", "\n    "))
		return b.String()
	}
	fmt.Fprintf(&b, " conns=%d/%d in %.3fs (%.0f/s, handshake p50 %s p99 %s)",
		r.ConnOK, r.Conns, r.ConnectWall.Seconds(), r.connectsPerSec(), ms(r.DialP50), ms(r.DialP99))
	fmt.Fprintf(&b, " echo=%d ok %d failed in %.3fs (%.0f msg/s, p50 %s p99 %s)",
		r.EchoOK, r.EchoFail, r.EchoWall.Seconds(), r.msgPerSec(), ms(r.EchoP50), ms(r.EchoP99))
	fmt.Fprintf(&b, " ping=%d ok %d failed (p50 %s p99 %s)", r.PingOK, r.PingFail, ms(r.PingP50), ms(r.PingP99))
	if r.HasProc {
		fmt.Fprintf(&b, " rss base=%.1fMB connected=%.1fMB held=%.1fMB (%.2f KB/conn) cpu=%.2fs (connect %.2fs, echo+ping %.2fs) procs=%d",
			mb(r.RSSBase), mb(r.RSSConnected), mb(r.RSSHeld), r.rssPerConn()/1024, r.CPU, r.CPUConnect, r.CPU-r.CPUConnect, r.Procs)
	}
	fmt.Fprintf(&b, " backend_cpu=%.2fs client_cpu=%.2fs (echo+ping %.2fs, %.2fs) other_cpu=%.2fs/%.1fs balance=%v",
		r.BackendCPU, r.ClientCPU, r.BackendCPUEcho, r.ClientCPUEcho, r.OtherCPU, r.Window, r.Balance)
	if r.Goroutines > 0 {
		fmt.Fprintf(&b, " goroutines=%d", r.Goroutines)
	}
	if r.TLS != "" {
		fmt.Fprintf(&b, " tls=[%s]", r.TLS)
	}
	if len(r.TopOthers) > 0 {
		fmt.Fprintf(&b, " top_others=[%s]", strings.Join(r.TopOthers, ", "))
	}
	if r.Undrained > 0 {
		fmt.Fprintf(&b, " UNDRAINED=%d", r.Undrained)
	}
	for _, e := range r.Errors {
		fmt.Fprintf(&b, " [%s]", e)
	}
	return b.String()
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// summary holds the medians of one target over its successful repetitions.
type summary struct {
	target                       string
	ok, errs                     int
	connFail, echoFail, pingFail int
	connPS, msgPS                float64
	p50, p99, ping50, ping99     float64 // ms
	rssKB, cpu                   float64
	base, held                   float64 // MB
	hasProc                      bool
	others                       float64 // cores used by other processes during the measurement
}

func summarize(target string, results []*repResult) summary {
	s := summary{target: target}
	var connPS, msgPS, p50, p99, pg50, pg99, rss, cpu, base, held, others []float64
	for _, r := range results {
		if r.Target != target {
			continue
		}
		if r.Err != "" {
			s.errs++
			continue
		}
		s.ok++
		s.connFail += r.ConnFail
		s.echoFail += r.EchoFail
		s.pingFail += r.PingFail
		connPS = append(connPS, r.connectsPerSec())
		msgPS = append(msgPS, r.msgPerSec())
		p50 = append(p50, float64(r.EchoP50)/1e6)
		p99 = append(p99, float64(r.EchoP99)/1e6)
		pg50 = append(pg50, float64(r.PingP50)/1e6)
		pg99 = append(pg99, float64(r.PingP99)/1e6)
		if r.Window > 0 {
			others = append(others, r.OtherCPU/r.Window)
		}
		if r.HasProc {
			s.hasProc = true
			rss = append(rss, r.rssPerConn()/1024)
			cpu = append(cpu, r.CPU)
			base = append(base, mb(r.RSSBase))
			held = append(held, mb(r.RSSHeld))
		}
	}
	s.connPS, s.msgPS = median(connPS), median(msgPS)
	s.p50, s.p99, s.ping50, s.ping99 = median(p50), median(p99), median(pg50), median(pg99)
	s.rssKB, s.cpu, s.base, s.held = median(rss), median(cpu), median(base), median(held)
	s.others = median(others)
	return s
}

func (s summary) failures() string {
	parts := []string{}
	if s.connFail > 0 {
		parts = append(parts, fmt.Sprintf("%d connect", s.connFail))
	}
	if s.echoFail > 0 {
		parts = append(parts, fmt.Sprintf("%d echo", s.echoFail))
	}
	if s.pingFail > 0 {
		parts = append(parts, fmt.Sprintf("%d ping", s.pingFail))
	}
	if s.errs > 0 {
		parts = append(parts, fmt.Sprintf("%d rep(s) errored", s.errs))
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, ", ")
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_=./,:+@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func commandLine() string {
	parts := []string{"go", "run", "./test/bench"}
	for _, a := range os.Args[1:] {
		parts = append(parts, shellQuote(a))
	}
	return strings.Join(parts, " ")
}

func report(cfg config, run []string, skipped map[string]string, results, discarded []*repResult, tl tools,
	soft, hard uint64, elapsed time.Duration, interrupted string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "## WebSocket proxy benchmark\n\n")
	fmt.Fprintf(&b, "Command: `%s`\n\n", commandLine())
	over := "plain TCP"
	if cfg.tls {
		over = fmt.Sprintf("TLS from the clients to the proxies (full handshakes; the client offers the groups %s; every proxy serves the same self-signed ECDSA P-256 certificate, HAProxy and nginx held to %s; negotiated: see below)", cfg.tlsGroups, tlsCipherSuite)
	}
	fmt.Fprintf(&b, "%d connections held per target over %s, %d echo rounds of %d B + 1 ping round, %d repetitions (medians below), dial concurrency %d, %d backend port(s), %d client source addresses; took %s.\n\n",
		cfg.conns, over, cfg.rounds, cfg.msgSize, cfg.reps, cfg.dialConc, cfg.backends, cfg.srcIPs, elapsed.Round(time.Second))
	if interrupted != "" {
		fmt.Fprintf(&b, "**Incomplete:** %s.\n\n", interrupted)
	}

	fmt.Fprintf(&b, "| target | connects/s | echo msg/s | echo p50 | echo p99 | ping p50 | ping p99 | RSS/conn KB | CPU s | failures | others' cores |\n")
	fmt.Fprintf(&b, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n")
	sums := map[string]summary{}
	for _, t := range run {
		s := summarize(t, results)
		sums[t] = s
		if s.ok == 0 {
			fmt.Fprintf(&b, "| %s | — | — | — | — | — | — | — | — | %s | — |\n", t, s.failures())
			continue
		}
		rss, cpu := "—", "—"
		if s.hasProc {
			rss, cpu = fmt.Sprintf("%.1f", s.rssKB), fmt.Sprintf("%.2f", s.cpu)
		}
		fmt.Fprintf(&b, "| %s | %.0f | %.0f | %.2f ms | %.2f ms | %.2f ms | %.2f ms | %s | %s | %s | %.2f |\n",
			t, s.connPS, s.msgPS, s.p50, s.p99, s.ping50, s.ping99, rss, cpu, s.failures(), s.others)
	}
	for _, t := range knownTargets {
		if why, ok := skipped[t]; ok {
			fmt.Fprintf(&b, "| %s | skipped: %s | | | | | | | | | |\n", t, why)
		}
	}
	var other, window float64
	for _, r := range results {
		other, window = other+r.OtherCPU, window+r.Window
	}
	if window > 0 && other/window > 0.1 {
		fmt.Fprintf(&b, "\n**Warning:** other processes of the machine used %.1f CPU s during %.1f s of measurement (%.0f%% of one core): the figures are disturbed; see other_cpu in the raw lines.\n", other, window, 100*other/window)
	}
	fmt.Fprintf(&b, "\nRSS/conn = (proxy RSS with all connections held after the echo and ping rounds − RSS after the warm-up) / connections; RSS and CPU are summed over the proxy's process group (nginx: master + workers). CPU s = proxy user+system CPU from the baseline to the end of the ping round. Others' cores = CPU used by the machine's other processes (not the proxy, backend or client) during the measurement, in cores (median over repetitions): above ~0.1 the figures are disturbed. Latencies are per message, from write to echo, with all connections sending at once. `direct` = client to the echo backend, no proxy.\n\n")

	if cfg.tls {
		fmt.Fprintf(&b, "| target | negotiated (version, key exchange group, cipher suite: connections) |\n|---|---|\n")
		for _, t := range run {
			seen := map[string]bool{}
			var all []string
			for _, r := range results {
				if r.Target == t && r.TLS != "" && !seen[r.TLS] {
					seen[r.TLS] = true
					all = append(all, r.TLS)
				}
			}
			if len(all) == 0 {
				all = []string{"plain (ws://)"}
			}
			fmt.Fprintf(&b, "| %s | %s |\n", t, strings.Join(all, " / "))
		}
		fmt.Fprintf(&b, "\n")
	}

	// Memory detail.
	fmt.Fprintf(&b, "| target | proxy RSS after warm-up MB | RSS with conns held MB |\n|---|---:|---:|\n")
	for _, t := range run {
		if s := sums[t]; s.ok > 0 && s.hasProc {
			fmt.Fprintf(&b, "| %s | %.1f | %.1f |\n", t, s.base, s.held)
		}
	}

	// Ratios.
	fmt.Fprintf(&b, "\n### ws_balancer vs the other proxies (ratio ws_balancer / other)\n\n")
	ws, ok := sums[tWSBalancer]
	if !ok || ws.ok == 0 {
		fmt.Fprintf(&b, "No ws_balancer result")
		if why := skipped[tWSBalancer]; why != "" {
			fmt.Fprintf(&b, " (skipped: %s)", why)
		}
		fmt.Fprintf(&b, ".\n")
	} else {
		fmt.Fprintf(&b, "Throughput: > 1 means ws_balancer is faster. Latency, RSS, CPU: < 1 means ws_balancer uses less.\n\n")
		fmt.Fprintf(&b, "| vs | connects/s | echo msg/s | echo p50 | echo p99 | ping p99 | RSS/conn | CPU s |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, t := range run {
			o := sums[t]
			if t == tWSBalancer || t == tDirect || o.ok == 0 {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", t,
				ratio(ws.connPS, o.connPS), ratio(ws.msgPS, o.msgPS), ratio(ws.p50, o.p50), ratio(ws.p99, o.p99),
				ratio(ws.ping99, o.ping99), ratio(ws.rssKB, o.rssKB), ratio(ws.cpu, o.cpu))
		}
	}

	fmt.Fprintf(&b, "\n### Raw per-repetition results\n\n```\n")
	for _, r := range results {
		fmt.Fprintf(&b, "%s\n", rawLine(r))
	}
	fmt.Fprintf(&b, "```\n")
	if len(discarded) > 0 {
		fmt.Fprintf(&b, "\nDiscarded and measured again (other processes used more than %.2f cores during the measurement):\n\n```\n", cfg.maxOthers)
		for _, r := range discarded {
			fmt.Fprintf(&b, "%s\n", rawLine(r))
		}
		fmt.Fprintf(&b, "```\n")
	}
	fmt.Fprintf(&b, "\n### Machine\n\n")
	host, _ := os.Hostname()
	fmt.Fprintf(&b, "- load average at the end: %s\n", readFirstLine("/proc/loadavg"))
	fmt.Fprintf(&b, "- nproc: %d (GOMAXPROCS of the client %d)\n", runtime.NumCPU(), runtime.GOMAXPROCS(0))
	fmt.Fprintf(&b, "- CPU: %s\n", cpuModel())
	fmt.Fprintf(&b, "- memory: %s\n", memTotal())
	fmt.Fprintf(&b, "- kernel: %s (%s)\n", readFirstLine("/proc/sys/kernel/osrelease"), host)
	fmt.Fprintf(&b, "- go: %s %s/%s\n", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(&b, "- RLIMIT_NOFILE: soft %d, hard %d (client, backend and proxies)\n", soft, hard)
	if tl.caddy != "" {
		fmt.Fprintf(&b, "- caddy: %s (%s)\n", versionOf(tl.caddy, "version"), tl.caddy)
	}
	if tl.baseCaddy != "" {
		fmt.Fprintf(&b, "- caddy of %s: %s (%s)\n", tWSBalancerBase, versionOf(tl.baseCaddy, "version"), tl.baseCaddy)
	}
	if tl.haproxy != "" {
		fmt.Fprintf(&b, "- haproxy: %s\n", versionOf(tl.haproxy, "-v"))
	}
	if tl.nginx != "" {
		fmt.Fprintf(&b, "- nginx: %s\n", versionOf(tl.nginx, "-v"))
	}
	fmt.Fprintf(&b, "- sysctl: ip_local_port_range %s, tcp_tw_reuse %s, somaxconn %s\n",
		strings.Join(strings.Fields(readFirstLine("/proc/sys/net/ipv4/ip_local_port_range")), "-"),
		readFirstLine("/proc/sys/net/ipv4/tcp_tw_reuse"), readFirstLine("/proc/sys/net/core/somaxconn"))
	fmt.Fprintf(&b, "- client, echo backend (1 process, GOMAXPROCS default) and proxy share the same %d cores; haproxy nbthread 2, nginx worker_processes 2, Caddy GOMAXPROCS default\n", runtime.NumCPU())
	return b.String()
}

func ratio(a, b float64) string {
	if b == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
