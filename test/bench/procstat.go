package main

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// clockTicks returns the kernel's USER_HZ (the unit of utime/stime in
// /proc/<pid>/stat), read from the AT_CLKTCK entry of the auxiliary vector;
// it falls back to 100, the value on every common Linux configuration.
func clockTicks() float64 {
	const atClkTck = 17
	b, err := os.ReadFile("/proc/self/auxv")
	if err == nil {
		for i := 0; i+16 <= len(b); i += 16 {
			k := binary.LittleEndian.Uint64(b[i:])
			v := binary.LittleEndian.Uint64(b[i+8:])
			if k == atClkTck && v > 0 {
				return float64(v)
			}
			if k == 0 {
				break
			}
		}
	}
	return 100
}

var clkTck = clockTicks()

// procStat holds the fields of /proc/<pid>/stat that we use.
type procStat struct {
	pid   int
	comm  string
	pgrp  int
	utime uint64 // clock ticks
	stime uint64 // clock ticks
}

func readProcStat(pid string) (procStat, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) may contain spaces and parentheses: the
	// fields we need come after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bad /proc/%s/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); field n is f[n-3].
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("short /proc/%s/stat", pid)
	}
	var st procStat
	st.pid, _ = strconv.Atoi(pid)
	if j := bytes.IndexByte(b, '('); j >= 0 && j < i {
		st.comm = string(b[j+1 : i])
	}
	st.pgrp, _ = strconv.Atoi(f[5-3])
	st.utime, _ = strconv.ParseUint(f[14-3], 10, 64)
	st.stime, _ = strconv.ParseUint(f[15-3], 10, 64)
	return st, nil
}

// readVmRSS returns VmRSS of a process in bytes.
func readVmRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line[len("VmRSS:"):])
			if len(f) >= 1 {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				if err != nil {
					return 0, err
				}
				return kb * 1024, nil
			}
		}
	}
	return 0, nil // kernel thread or zombie: no VmRSS line
}

// groupStats is the summed resource use of every process of one process
// group (a proxy we started with Setpgid, i.e. the master and its workers).
type groupStats struct {
	RSS    int64   // bytes, sum of VmRSS
	CPU    float64 // seconds, sum of utime+stime
	NProcs int
}

func readGroupStats(pgid int) (groupStats, error) {
	var gs groupStats
	if pgid <= 0 {
		return gs, fmt.Errorf("no process group")
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return gs, err
	}
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		st, err := readProcStat(name)
		if err != nil || st.pgrp != pgid {
			continue
		}
		rss, err := readVmRSS(st.pid)
		if err != nil {
			continue // exited meanwhile
		}
		gs.RSS += rss
		gs.CPU += float64(st.utime+st.stime) / clkTck
		gs.NProcs++
	}
	if gs.NProcs == 0 {
		return gs, fmt.Errorf("process group %d has no live process", pgid)
	}
	return gs, nil
}

// procSnapshot maps pid to the process's command name and CPU seconds.
type procSnapshot map[int]procStat

func snapshotProcs() procSnapshot {
	snap := procSnapshot{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return snap
	}
	for _, e := range ents {
		name := e.Name()
		if name[0] < '0' || name[0] > '9' {
			continue
		}
		if st, err := readProcStat(name); err == nil {
			snap[st.pid] = st
		}
	}
	return snap
}

// topOthers lists the processes, other than those of the excluded process
// groups, that used the most CPU between two snapshots (at most n, each with
// at least 0.05 s), as "comm(pid) 1.23s".
func topOthers(before, after procSnapshot, excludePgrps map[int]bool, n int) []string {
	type use struct {
		name string
		sec  float64
	}
	var uses []use
	for pid, a := range after {
		if excludePgrps[a.pgrp] {
			continue
		}
		b := before[pid] // zero for a process started meanwhile
		sec := float64(a.utime+a.stime-b.utime-b.stime) / clkTck
		if sec >= 0.05 {
			uses = append(uses, use{fmt.Sprintf("%s(%d)", a.comm, pid), sec})
		}
	}
	sort.Slice(uses, func(i, j int) bool { return uses[i].sec > uses[j].sec })
	var out []string
	for i := 0; i < len(uses) && i < n; i++ {
		out = append(out, fmt.Sprintf("%s %.2fs", uses[i].name, uses[i].sec))
	}
	return out
}

// selfCPU returns the CPU seconds (user+system) used so far by this process.
func selfCPU() float64 {
	st, err := readProcStat("self")
	if err != nil {
		return 0
	}
	return float64(st.utime+st.stime) / clkTck
}

// raiseNofile raises the RLIMIT_NOFILE soft limit to the hard limit. Calling
// syscall.Setrlimit also makes os/exec hand the raised limit to children
// (instead of the soft limit the process started with).
func raiseNofile() (soft, hard uint64, err error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, 0, err
	}
	return rl.Cur, rl.Max, nil
}

// systemBusyCPU returns the CPU seconds all CPUs spent not idle since boot
// (user+nice+system+irq+softirq+steal of the "cpu" line of /proc/stat).
func systemBusyCPU() float64 {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0
	}
	var busy uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, _ := strconv.ParseUint(f[i], 10, 64)
		busy += v
	}
	return float64(busy) / clkTck
}

// readFirstLine returns the first line of a file, trimmed.
func readFirstLine(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	s, _, _ := strings.Cut(string(b), "\n")
	return strings.TrimSpace(s)
}

// cpuModel returns the "model name" of the first CPU in /proc/cpuinfo.
func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

// memTotal returns MemTotal from /proc/meminfo, as written there.
func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "MemTotal:") {
			return strings.TrimSpace(line[len("MemTotal:"):])
		}
	}
	return "unknown"
}
