package consuldev

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
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
)

// ManagementToken is the initial management token of agents started with
// Options.ACL: it may do anything, as on a freshly bootstrapped cluster.
const ManagementToken = "3d1a7e64-8f2b-4c1e-9a57-0c2b8d9e6f10"

// startTimeout bounds an agent's start until it has a leader.
const startTimeout = 60 * time.Second

// Options shape an agent.
type Options struct {
	// ACL turns ACLs on with default policy "deny" and ManagementToken as
	// the initial management token (also the agent's own token).
	ACL bool

	// HCL is extra agent configuration, e.g. `check_update_interval = "0s"`.
	HCL string
}

// LaunchOptions shape an agent started with Launch.
type LaunchOptions struct {
	// Dir holds the agent's configuration and, unless it is a dev agent,
	// its data. It is created if missing.
	Dir string

	// Name is the agent's node name, used as it is.
	Name string

	// Join is the serf LAN address (SerfLANAddr) of a server for a client
	// agent to join (retry_join). Empty: the agent is a server.
	Join string

	// Dev makes a server a `consul agent -dev` (Raft in memory). False: a
	// single server (bootstrap_expect = 1) with its Raft log in Dir, as
	// production servers keep it. Client agents ignore it.
	Dev bool

	// HCL is extra agent configuration, as in Options.
	HCL string
}

// Agent is a running Consul agent: `consul agent -dev` as Start starts it,
// or whatever LaunchOptions asked for. Its ports stay the same across Stop
// and Restart, so clients configured with Addr reach it again; a dev
// agent's state does not (it keeps everything in memory).
type Agent struct {
	bin    string
	spec   spec
	ports  ports
	logs   *lockedBuffer
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// spec is what Start and Launch both ask of an agent.
type spec struct {
	dir, name string
	join      string // a client agent joining this server; empty: a server
	dev       bool
	acl       bool
	hcl       string
}

type ports struct{ http, dns, grpc, serfLAN, serfWAN, server int }

// Start starts an agent for one test and stops it when the test ends.
func Start(tb testing.TB, opts Options) *Agent {
	tb.Helper()
	a, err := start(context.Background(), spec{dir: tb.TempDir(), name: nodeName(tb.Name()), dev: true, acl: opts.ACL, hcl: opts.HCL})
	if err != nil {
		tb.Fatalf("starting consul agent -dev: %v", err)
	}
	tb.Cleanup(func() {
		if err := a.stop(); err != nil {
			tb.Errorf("stopping consul agent: %v", err)
		}
	})
	return a
}

// Launch starts an agent outside tests (for tools such as
// test/consulscale), waits until it knows a leader and its own node is in
// the catalog, and returns it. It runs until Kill (or Stop), or until the
// calling process dies; ctx bounds only the start.
func Launch(ctx context.Context, opts LaunchOptions) (*Agent, error) {
	if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		return nil, err
	}
	a, err := start(ctx, spec{dir: opts.Dir, name: opts.Name, join: opts.Join, dev: opts.Dev && opts.Join == "", hcl: opts.HCL})
	if err != nil {
		return nil, fmt.Errorf("starting consul agent %s: %w", opts.Name, err)
	}
	return a, nil
}

func start(ctx context.Context, s spec) (*Agent, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	// Ports are probed free, then bound by the agent a moment later; test
	// packages running in parallel may take one in between, so a start
	// that finds a port taken tries again with new ones.
	for attempt := 1; ; attempt++ {
		p, err := freePorts()
		if err != nil {
			return nil, err
		}
		a := &Agent{bin: bin, spec: s, ports: p, logs: new(lockedBuffer)}
		if err := os.WriteFile(a.configFile(), []byte(a.config()), 0o600); err != nil {
			return nil, err
		}
		err = a.launch(ctx)
		if err == nil {
			return a, nil
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			return nil, err
		}
	}
}

func (a *Agent) configFile() string { return filepath.Join(a.spec.dir, "agent.hcl") }

// config is the agent's configuration: every port chosen free on loopback
// (parallel test packages each run agents), nothing that reaches outside.
func (a *Agent) config() string {
	var b strings.Builder
	fmt.Fprintf(&b, "node_name = %q\n", a.spec.name)
	b.WriteString("bind_addr = \"127.0.0.1\"\nclient_addr = \"127.0.0.1\"\n")
	b.WriteString("disable_update_check = true\nenable_script_checks = false\n")
	b.WriteString("log_level = \"warn\"\n")
	fmt.Fprintf(&b, "ports {\n  http = %d\n  https = -1\n  dns = %d\n  grpc = %d\n  grpc_tls = -1\n  serf_lan = %d\n  serf_wan = %d\n  server = %d\n}\n",
		a.ports.http, a.ports.dns, a.ports.grpc, a.ports.serfLAN, a.ports.serfWAN, a.ports.server)
	switch {
	case a.spec.join != "":
		fmt.Fprintf(&b, "server = false\ndata_dir = %q\nretry_join = [%q]\n", filepath.Join(a.spec.dir, "data"), a.spec.join)
	case !a.spec.dev:
		fmt.Fprintf(&b, "server = true\nbootstrap_expect = 1\ndata_dir = %q\n", filepath.Join(a.spec.dir, "data"))
	}
	if a.spec.acl {
		fmt.Fprintf(&b, "acl {\n  enabled = true\n  default_policy = \"deny\"\n  enable_token_persistence = false\n  tokens {\n    initial_management = %q\n    agent = %q\n  }\n}\n",
			ManagementToken, ManagementToken)
	}
	b.WriteString(a.spec.hcl)
	b.WriteString("\n")
	return b.String()
}

func (a *Agent) launch(ctx context.Context) error {
	args := []string{"agent"}
	if a.spec.dev {
		args = append(args, "-dev")
	}
	cmd := exec.Command(a.bin, append(args, "-config-file", a.configFile())...)
	cmd.Stdout, cmd.Stderr = a.logs, a.logs
	// Its own process group, so that nothing it starts outlives it, killed
	// if the process that started it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("running %s: %w", a.bin, err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	a.mu.Lock()
	a.cmd, a.exited = cmd, exited
	a.mu.Unlock()
	if err := a.waitLeader(ctx, exited); err != nil {
		a.Kill()
		return fmt.Errorf("%w\nagent log:\n%s", err, a.logs.String())
	}
	return nil
}

// waitLeader polls /v1/status/leader until the agent knows a leader (a
// server has elected itself, a client has joined), and the catalog until
// it holds the agent's own node, so that the first request does not race
// the agent's start.
func (a *Agent) waitLeader(ctx context.Context, exited <-chan struct{}) error {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	c := a.rawClient(ManagementToken)
	for {
		leader, err := c.Status().Leader()
		if err == nil && leader != "" {
			var n *api.CatalogNode
			if n, _, err = c.Catalog().Node(a.spec.name, nil); err == nil && n != nil && n.Node != nil {
				return nil
			}
		}
		select {
		case <-exited:
			return errors.New("consul agent exited during start")
		case <-ctx.Done():
			return fmt.Errorf("no leader after %s (last error: %v)", startTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Addr is the agent's HTTP address, host:port.
func (a *Agent) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.http)) }

// SerfLANAddr is the agent's serf LAN address, host:port: what a client
// agent joins (LaunchOptions.Join).
func (a *Agent) SerfLANAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.serfLAN))
}

// Pid is the agent process's id (0 once stopped), e.g. to read its CPU
// time from /proc.
func (a *Agent) Pid() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// DNSAddr is the agent's DNS address, host:port (UDP and TCP).
func (a *Agent) DNSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.ports.dns)) }

// Logs returns what the agent has printed so far.
func (a *Agent) Logs() string { return a.logs.String() }

// Client returns a consul/api client for the agent carrying token, with a
// transport of its own whose idle connections close with the test.
func (a *Agent) Client(tb testing.TB, token string) *api.Client {
	tb.Helper()
	return NewClient(tb, a.Addr(), token)
}

// NewClient returns a consul/api client for addr carrying token, with a
// transport of its own whose idle connections close with the test, so that
// tests do not share connections.
func NewClient(tb testing.TB, addr, token string) *api.Client {
	tb.Helper()
	transport := &http.Transport{}
	tb.Cleanup(transport.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", Token: token, Transport: transport})
	if err != nil {
		tb.Fatalf("creating a consul client: %v", err)
	}
	return c
}

func (a *Agent) rawClient(token string) *api.Client {
	c, _ := api.NewClient(&api.Config{Address: a.Addr(), Scheme: "http", Token: token, Transport: &http.Transport{}})
	return c
}

// Stop stops the agent as an outage would: clients get connection refused
// until Restart.
func (a *Agent) Stop(tb testing.TB) {
	tb.Helper()
	if err := a.stop(); err != nil {
		tb.Fatalf("stopping consul agent: %v", err)
	}
}

// Restart starts a stopped agent again on the same ports. It comes back
// empty: services, checks and ACL tokens other than the management token
// are gone, as after any dev agent's restart.
func (a *Agent) Restart(tb testing.TB) {
	tb.Helper()
	if err := a.launch(context.Background()); err != nil {
		tb.Fatalf("restarting consul agent: %v", err)
	}
}

// stop ends the agent (SIGTERM, SIGKILL after 5 s) and waits for it. A dev
// agent under load sometimes sits on SIGTERM (hashicorp/consul#12247); for
// an outage or a test's end, killing it is as good.
func (a *Agent) stop() error {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.cmd = nil
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
	if s := a.logs.String(); strings.Contains(s, "panic:") {
		return fmt.Errorf("consul agent panicked:\n%s", s)
	}
	return nil
}

// Kill ends the agent at once (SIGKILL to its process group) and waits
// for it: for tools, which throw away what the agent kept. Killing a
// stopped agent does nothing.
func (a *Agent) Kill() {
	a.mu.Lock()
	cmd, exited := a.cmd, a.exited
	a.cmd = nil
	a.mu.Unlock()
	if cmd != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// RaftIndex is the agent's last Raft log index. Each catalog write (a
// registration, a check status change, a deregistration) is one entry, so
// its growth over an interval counts the writes every server would apply.
func (a *Agent) RaftIndex(tb testing.TB) uint64 {
	tb.Helper()
	n, err := a.LastLogIndex()
	if err != nil {
		tb.Fatal(err)
	}
	return n
}

// LastLogIndex is RaftIndex for use outside tests: a server's last Raft
// log index, or an error.
func (a *Agent) LastLogIndex() (uint64, error) {
	self, err := a.rawClient(ManagementToken).Agent().Self()
	if err != nil {
		return 0, fmt.Errorf("reading /v1/agent/self: %w", err)
	}
	stats, _ := self["Stats"]["raft"].(map[string]any)
	n, err := strconv.ParseUint(fmt.Sprint(stats["last_log_index"]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("reading raft last_log_index from %v: %w", stats, err)
	}
	return n, nil
}

// freePorts picks six free loopback ports. Ports are found by binding to
// port 0 and closing; the agent binds them a moment later. Serf binds UDP
// too, so each candidate is checked for both.
func freePorts() (ports, error) {
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
			return ports{}, fmt.Errorf("finding a free port: %w", err)
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
	return ports{http: got[0], dns: got[1], grpc: got[2], serfLAN: got[3], serfWAN: got[4], server: got[5]}, nil
}

// nodeName turns a test's name into a valid, unique-enough node name.
func nodeName(test string) string {
	var b strings.Builder
	b.WriteString("wsb-")
	for _, r := range strings.ToLower(test) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	s := b.String()
	if len(s) > 50 {
		s = s[:50]
	}
	return strings.TrimRight(s, "-")
}

// lockedBuffer collects a process's output for reading while it runs.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 { // a long run's agent: keep the start, which says why it failed
		return len(p), nil
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
