// Command consulscale measures what sharing live connection counts through
// Consul costs as the fleet grows, on a real Consul agent (1.14.11, built by
// test/consul/build.sh, or $CONSUL_BIN).
//
//	go run ./test/consulscale -backends 50,200,500 -balancers 2,5,10
//
// For each cell of the grid it starts a fresh `consul agent -dev` (with
// -dev=false a single server keeping its Raft log on disk) on free loopback
// ports through test/consuldev, the agents the tests run (with -topology
// clients also client agents for the backends' nodes and one per balancer,
// as in a real cluster), registers
// N backends, each a real wsbackend.Register with its own Counter and HTTP
// client, whose counts churn (-profile), and starts M balancers, each a real
// consul.Watcher and consul.Source with its own HTTP client. After -warmup
// it measures for -window: the agents' CPU and RSS, the Raft writes/s (growth
// of last_log_index), the bytes the watchers read, and for every publish
// (a re-registration's return) the time until every balancer's subscriber
// saw it or a later report of the same backend. It prints a Markdown table,
// the raw figures of every attempt and the machine's state.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/time/rate"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

type config struct {
	backends, balancers []int
	topology            string
	dev                 bool
	perAgent            int
	profile             churnProfile
	warmup, window      time.Duration
	grace               time.Duration
	timeout             time.Duration
	redo                int
	maxOthers           float64
	waitIdle            time.Duration
	idleCores           float64
	out                 string
	watch               watchOptions
	reg                 wsbackend.RegistrationOptions
}

func main() {
	var cfg config
	var backends, balancers, profile string
	flag.StringVar(&backends, "backends", "50,200,500", "comma-separated backend counts")
	flag.StringVar(&balancers, "balancers", "2,5,10", "comma-separated balancer counts")
	flag.StringVar(&cfg.topology, "topology", "server", "server: backends and balancers all talk to the server agent; clients: backends register with client agents (-backends-per-agent each) and each balancer watches through a client agent of its own, as on the nodes of a real cluster")
	flag.IntVar(&cfg.perAgent, "backends-per-agent", 25, "topology clients: backends registered with each backends' client agent (a node running that many backends)")
	flag.BoolVar(&cfg.dev, "dev", true, "run the server as `consul agent -dev` (Raft in memory, pretty-printed JSON); false: a single server with its Raft log on disk under the system temp dir")
	flag.StringVar(&profile, "profile", "realistic", "realistic: random walk plus bursts (see -conns, -churn, -burst-every, -burst); worst: every count swings 25% each second")
	flag.Float64Var(&cfg.profile.mean, "conns", 1000, "mean connections per backend")
	flag.Float64Var(&cfg.profile.sigma, "churn", 0.03, "random walk of each count: standard deviation per √s, as a fraction of -conns")
	flag.Float64Var(&cfg.profile.revert, "revert", 1.0/60, "pull of each count back to -conns, per second")
	flag.DurationVar(&cfg.profile.burstMean, "burst-every", time.Minute, "mean time between bursts of one backend (0: none)")
	flag.Float64Var(&cfg.profile.burst, "burst", 0.3, "burst size as a fraction of -conns (half to all of it, up or down)")
	flag.DurationVar(&cfg.warmup, "warmup", 15*time.Second, "churn before the measured window")
	flag.DurationVar(&cfg.window, "window", 30*time.Second, "measured window")
	flag.DurationVar(&cfg.grace, "grace", 10*time.Second, "after the window, how long publishes of the window may take to reach every balancer")
	flag.DurationVar(&cfg.timeout, "timeout", 45*time.Minute, "overall limit")
	flag.IntVar(&cfg.redo, "redo-disturbed", 1, "measure a cell again (up to this many times) when other processes used more than -max-others cores")
	flag.Float64Var(&cfg.maxOthers, "max-others", 0.5, "cores other processes may use during a window before it counts as disturbed")
	flag.DurationVar(&cfg.waitIdle, "wait-idle", 30*time.Second, "before each cell, wait up to this long for other processes to use less than -idle-cores")
	flag.Float64Var(&cfg.idleCores, "idle-cores", 0.3, "see -wait-idle")
	flag.StringVar(&cfg.out, "out", "", "also write the report to this file")
	flag.StringVar(&cfg.watch.consistency, "consistency", "", "balancers' consistency mode: '' (default) or stale")
	flag.BoolVar(&cfg.watch.cached, "cached", false, "balancers add ?cached to their health queries")
	flag.BoolVar(&cfg.watch.noGzip, "watch-no-gzip", false, "balancers' HTTP clients do not ask for gzip (default: they do, as consul/api's transport does)")
	rateF := flag.Float64("watch-rate", 0, "watcher query rate per second (0: the Watcher's default, 2)")
	flag.IntVar(&cfg.watch.burst, "watch-burst", 0, "watcher burst (0: the Watcher's default, 2)")
	flag.DurationVar(&cfg.reg.MinPublishInterval, "min-publish-interval", 0, "backends' MinPublishInterval (0: the library's default, 2s)")
	flag.Float64Var(&cfg.reg.Threshold, "threshold", 0, "backends' Threshold (0: the library's default, 0.10)")
	flag.DurationVar(&cfg.reg.RefreshAfter, "refresh-after", 0, "backends' RefreshAfter (0: the library's default, 30s)")
	cpuprofile := flag.String("cpuprofile", "", "write this tool's CPU profile (backends and balancers) to this file")
	flag.Parse()
	cfg.watch.rate = rate.Limit(*rateF)
	cfg.profile.name = profile
	var err error
	if cfg.backends, err = parseInts(backends); err != nil {
		fatalf("-backends: %v", err)
	}
	if cfg.balancers, err = parseInts(balancers); err != nil {
		fatalf("-balancers: %v", err)
	}
	if profile != "realistic" && profile != "worst" {
		fatalf("-profile must be realistic or worst")
	}
	if cfg.topology != "server" && cfg.topology != "clients" {
		fatalf("-topology must be server or clients")
	}
	raiseNofile()
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			fatalf("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf("%v", err)
		}
		defer pprof.StopCPUProfile()
	}

	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	bin, err := consuldev.Binary()
	if err != nil {
		fatalf("%v", err)
	}
	tmp, err := os.MkdirTemp("", "consulscale-")
	if err != nil {
		fatalf("%v", err)
	}
	defer os.RemoveAll(tmp)

	started := time.Now()
	var results []cellResult
	var failures []string
	for _, n := range cfg.backends {
		for _, m := range cfg.balancers {
			var attempts []result
			for try := 0; try <= cfg.redo; try++ {
				if ctx.Err() != nil {
					break
				}
				waitIdle(ctx, cfg.waitIdle, cfg.idleCores)
				r, err := runCell(ctx, cfg, tmp, n, m)
				if err != nil {
					fmt.Fprintf(os.Stderr, "cell %d×%d: %v\n", n, m, err)
					failures = append(failures, fmt.Sprintf("%d×%d: %v", n, m, firstLine(err.Error())))
					if ctx.Err() != nil {
						break
					}
					continue
				}
				fmt.Fprintln(os.Stderr, r.raw())
				attempts = append(attempts, r)
				if r.othersCores <= cfg.maxOthers {
					break
				}
			}
			if len(attempts) > 0 {
				results = append(results, cellResult{n: n, m: m, attempts: attempts})
			}
		}
	}
	rep := report(cfg, bin, results, failures, started)
	fmt.Print(rep)
	if cfg.out != "" {
		if err := os.WriteFile(cfg.out, []byte(rep), 0o644); err != nil {
			fatalf("%v", err)
		}
	}
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "stopped early:", context.Cause(ctx))
		os.Exit(1)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("bad count %q", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "consulscale: "+format+"\n", args...)
	os.Exit(2)
}

func raiseNofile() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// waitIdle waits up to d for the machine's processes to use less than cores.
func waitIdle(ctx context.Context, d time.Duration, cores float64) {
	if d <= 0 {
		return
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		b0, s0, t0 := machineBusySeconds(), selfCPU(), time.Now()
		time.Sleep(time.Second)
		b1, s1 := machineBusySeconds(), selfCPU()
		if (b1-b0-(s1-s0))/time.Since(t0).Seconds() < cores {
			return
		}
	}
}

func selfCPU() float64 {
	s, _ := cpuSeconds(os.Getpid())
	return s
}

type cellResult struct {
	n, m     int
	attempts []result
}

// best is the least disturbed attempt among those that measured what they
// should (every instance passing, publishes seen); failing that, the least
// disturbed of all.
func (c cellResult) best() result {
	ok := func(r result) bool { return r.minPassing == r.n && r.lat.published > 0 }
	return slices.MinFunc(c.attempts, func(a, b result) int {
		switch {
		case ok(a) != ok(b):
			if ok(a) {
				return -1
			}
			return 1
		case a.othersCores < b.othersCores:
			return -1
		case a.othersCores > b.othersCores:
			return 1
		}
		return 0
	})
}

func machine() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%d CPUs (%s), Go %s, kernel %s, host %s", runtime.NumCPU(), cpuModel(), runtime.Version(),
		readFirstLine("/proc/sys/kernel/osrelease"), host)
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
