package main

// -profile: where a proxy's time and bytes go. For every proxy target and
// repetition it records, into DIR/<target>-rep<N>-*:
//
//	connect.perf.data, echo.perf.data  perf record -g of the proxy's processes
//	                                   during the connect phase and during the
//	                                   echo and ping rounds (when perf is
//	                                   installed): kernel and user space;
//	connect.stat.txt, echo.stat.txt    perf stat of the same: system calls,
//	                                   context switches and CPU time, counts
//	                                   that do not drift with the machine's
//	                                   speed as times do;
//	connect.syscalls.txt, echo.…       perf stat of the system calls by name;
//	allocs-{base,connected,held}.pb.gz Go allocation profiles (Caddy targets,
//	                                   from the admin endpoint) at the baseline,
//	                                   after the connect phase and after the
//	                                   ping round: -diff_base of two gives the
//	                                   bytes and objects allocated per phase;
//	heap.pb.gz, heap.txt, goroutine.txt live heap (heap.txt: with the
//	                                   runtime's MemStats) and goroutines with
//	                                   every connection held (Caddy targets).
//
// perf costs CPU: the throughput of a profiled run is not comparable with an
// unprofiled one.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// groupPids lists the processes of a process group.
func groupPids(pgid int) []int {
	var pids []int
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if st, err := readProcStat(name); err == nil && st.pgrp == pgid {
			pids = append(pids, st.pid)
		}
	}
	return pids
}

// profiler writes one target repetition's profiles.
type profiler struct {
	prefix string // DIR/<target>-rep<N>-
	perf   string // perf binary, or "" when not installed
	admin  string // http://host:port of a Caddy admin endpoint, or ""
}

func newProfiler(dir, target string, rep int, p *proxyProc) *profiler {
	if dir == "" || p == nil {
		return nil
	}
	pr := &profiler{prefix: filepath.Join(dir, fmt.Sprintf("%s-rep%d-", target, rep)), perf: lookBin("perf")}
	if p.adminPort > 0 {
		pr.admin = "http://127.0.0.1:" + strconv.Itoa(p.adminPort)
	}
	return pr
}

// perfRecord starts perf record and perf stat on the processes of pgid;
// stop ends them and waits until their output is written.
func (pr *profiler) perfRecord(name string, pgid int) (stop func()) {
	if pr == nil || pr.perf == "" {
		return func() {}
	}
	var ids []string
	for _, pid := range groupPids(pgid) {
		ids = append(ids, strconv.Itoa(pid))
	}
	pids := strings.Join(ids, ",")
	out := pr.prefix + name
	var cmds []*exec.Cmd
	for _, args := range [][]string{
		{"record", "-g", "-F", "999", "-o", out + ".perf.data", "-p", pids},
		{"stat", "-e", "raw_syscalls:sys_enter,context-switches,task-clock", "-o", out + ".stat.txt", "-p", pids},
		{"stat", "-e", syscallEvents(), "-o", out + ".syscalls.txt", "-p", pids},
	} {
		cmd := exec.Command(pr.perf, args...)
		if lf, err := os.Create(out + "." + args[0] + strconv.Itoa(len(cmds)) + ".log"); err == nil {
			cmd.Stdout, cmd.Stderr = lf, lf
			defer lf.Close()
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := startChild(cmd); err != nil {
			logf("perf %s: %v", args[0], err)
			continue
		}
		cmds = append(cmds, cmd)
	}
	// perf needs a moment to attach before the phase starts.
	time.Sleep(300 * time.Millisecond)
	return func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Signal(syscall.SIGINT)
		}
		for _, cmd := range cmds {
			done := make(chan struct{})
			go func() { _ = cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
			}
			forgetChild(cmd.Process.Pid)
		}
	}
}

// pprof saves one of the Caddy admin endpoint's profiles.
func (pr *profiler) pprof(profile, file string) {
	if pr == nil || pr.admin == "" {
		return
	}
	resp, err := http.Get(pr.admin + "/debug/pprof/" + profile)
	if err != nil {
		logf("profile %s: %v", profile, err)
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(pr.prefix + file)
	if err != nil {
		logf("profile %s: %v", profile, err)
		return
	}
	defer f.Close()
	_, _ = io.Copy(f, resp.Body)
}

// syscallEvents lists the tracepoints of the system calls a proxy makes
// (perf stat follows threads started after it attached; perf trace does
// not).
func syscallEvents() string {
	var evs []string
	for _, name := range []string{
		"read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
		"epoll_ctl", "epoll_wait", "epoll_pwait", "futex", "nanosleep", "sched_yield",
		"socket", "connect", "accept4", "close", "shutdown", "setsockopt", "getsockopt",
		"getsockname", "getpeername", "fcntl", "ioctl", "eventfd2", "tgkill", "getpid",
		"mmap", "munmap", "madvise", "brk",
	} {
		evs = append(evs, "syscalls:sys_enter_"+name)
	}
	return strings.Join(evs, ",")
}

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

// caddyGoroutines is the goroutine count of a Caddy process, from its admin
// endpoint; 0 if it cannot be read.
func caddyGoroutines(adminPort int) int {
	if adminPort <= 0 {
		return 0
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + strconv.Itoa(adminPort) + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	m := goroutineTotal.FindSubmatch(b)
	if m == nil {
		return 0
	}
	n, _ := strconv.Atoi(string(m[1]))
	return n
}
