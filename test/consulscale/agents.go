package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// consulBinary returns $CONSUL_BIN, or the last line test/consul/build.sh
// prints (it builds the pinned Consul once and then reuses it).
func consulBinary() (string, error) {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		return p, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		script := filepath.Join(dir, "test", "consul", "build.sh")
		if _, err := os.Stat(script); err == nil {
			var stdout, stderr bytes.Buffer
			cmd := exec.Command(script)
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Run(); err != nil {
				return "", fmt.Errorf("%s: %w\n%s", script, err, stderr.String())
			}
			lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
			return lines[len(lines)-1], nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("test/consul/build.sh not found above the working directory; set CONSUL_BIN")
		}
		dir = parent
	}
}

// agent is one Consul process: the dev server, or a client agent joined to
// it. Every port is a free loopback port.
type agent struct {
	name   string
	server bool
	dir    string
	ports  agentPorts
	cmd    *exec.Cmd
	exited chan struct{}
	logs   lockedBuffer
}

type agentPorts struct{ http, dns, grpc, serfLAN, serfWAN, server int }

func (a *agent) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http)) }
func (a *agent) pid() int     { return a.cmd.Process.Pid }

// agentHCL is the configuration shared by every agent: loopback only, no
// update check, no script checks, quiet logs, and a per-client HTTP
// connection limit above the default 200, because every simulated backend
// and balancer connects from 127.0.0.1 (in production each has its own
// address). check_update_interval is Consul's default, stated so that the
// study does not depend on it: a TTL heartbeat whose output alone changed
// is synced to the servers at most every 5 minutes.
const agentHCL = `bind_addr = "127.0.0.1"
client_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
disable_update_check = true
enable_script_checks = false
log_level = "warn"
check_update_interval = "5m"
limits {
  http_max_conns_per_client = 10000
}
`

// startAgent starts a dev server (join == "") or a client agent joined to the
// dev server's LAN serf address, and waits until it knows a leader and its
// own node is in the catalog.
//
// With dev false the server is not a dev agent but a single server
// (bootstrap_expect = 1) that keeps its Raft log on disk, as production
// servers do; a dev agent also pretty-prints every JSON answer, about
// doubling what watchers read.
func startAgent(ctx context.Context, bin, dir, name, join string, dev bool) (*agent, error) {
	p, err := freePorts()
	if err != nil {
		return nil, err
	}
	a := &agent{name: name, server: join == "", dir: filepath.Join(dir, name), ports: p}
	if err := os.MkdirAll(a.dir, 0o700); err != nil {
		return nil, err
	}
	var b strings.Builder
	b.WriteString(agentHCL)
	fmt.Fprintf(&b, "node_name = %q\n", name)
	fmt.Fprintf(&b, "ports {\n  http = %d\n  https = -1\n  dns = %d\n  grpc = %d\n  grpc_tls = -1\n  serf_lan = %d\n  serf_wan = %d\n  server = %d\n}\n",
		p.http, p.dns, p.grpc, p.serfLAN, p.serfWAN, p.server)
	args := []string{"agent"}
	switch {
	case a.server && dev:
		args = append(args, "-dev")
	case a.server:
		fmt.Fprintf(&b, "server = true\nbootstrap_expect = 1\ndata_dir = %q\n", filepath.Join(a.dir, "data"))
	default:
		fmt.Fprintf(&b, "server = false\ndata_dir = %q\nretry_join = [%q]\n", filepath.Join(a.dir, "data"), join)
	}
	cfgFile := filepath.Join(a.dir, "agent.hcl")
	if err := os.WriteFile(cfgFile, []byte(b.String()), 0o600); err != nil {
		return nil, err
	}
	args = append(args, "-config-file", cfgFile)
	a.cmd = exec.Command(bin, args...)
	a.cmd.Stdout, a.cmd.Stderr = &a.logs, &a.logs
	// Its own process group, killed if this tool dies.
	a.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := a.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	a.exited = make(chan struct{})
	go func() { _ = a.cmd.Wait(); close(a.exited) }()
	if err := a.waitReady(ctx); err != nil {
		a.stop()
		return nil, fmt.Errorf("agent %s: %w\n%s", name, err, a.logs.String())
	}
	return a, nil
}

func (a *agent) client() *api.Client {
	c, _ := api.NewClient(&api.Config{Address: a.addr(), Scheme: "http", Transport: &http.Transport{}})
	return c
}

func (a *agent) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	c := a.client()
	var err error
	for {
		var leader string
		leader, err = c.Status().Leader()
		if err == nil && leader != "" {
			var n *api.CatalogNode
			n, _, err = c.Catalog().Node(a.name, nil)
			if err == nil && n != nil && n.Node != nil {
				return nil
			}
		}
		select {
		case <-a.exited:
			return errors.New("exited during start")
		case <-ctx.Done():
			return fmt.Errorf("not ready after 60s (last error: %v)", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// stop kills the agent's process group and waits for it. Dev agents keep
// nothing, and client agents' data directories are removed with the run's.
func (a *agent) stop() {
	if a.cmd == nil || a.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-a.cmd.Process.Pid, syscall.SIGKILL)
	<-a.exited
}

// raftIndex is the server's last Raft log index: each catalog write
// (registration, check status change, deregistration) is one entry.
func (a *agent) raftIndex() (uint64, error) {
	self, err := a.client().Agent().Self()
	if err != nil {
		return 0, err
	}
	stats, _ := self["Stats"]["raft"].(map[string]any)
	return strconv.ParseUint(fmt.Sprint(stats["last_log_index"]), 10, 64)
}

// freePorts picks six free loopback ports, each free for both TCP and UDP
// (serf uses both).
func freePorts() (agentPorts, error) {
	var got []int
	var held []func()
	defer func() {
		for _, release := range held {
			release()
		}
	}()
	for len(got) < 6 {
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return agentPorts{}, err
		}
		port := tl.Addr().(*net.TCPAddr).Port
		ul, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			tl.Close()
			continue
		}
		held = append(held, func() { tl.Close(); ul.Close() })
		got = append(got, port)
	}
	return agentPorts{http: got[0], dns: got[1], grpc: got[2], serfLAN: got[3], serfWAN: got[4], server: got[5]}, nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 { // keep the start, which says why an agent failed
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
