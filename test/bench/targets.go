package main

// Starting and stopping the proxies under test, with their config templates.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/template"
	"time"
)

const (
	tDirect     = "direct"
	tWSBalancer = "ws_balancer"
	// tWSBalancerBase is ws_balancer in another Caddy binary (-base-caddy):
	// before and after a change in one interleaved run.
	tWSBalancerBase = "ws_balancer_base"
	tReverseProxy   = "reverse_proxy"
	tHAProxy        = "haproxy"
	tNginx          = "nginx"
)

var allTargets = []string{tDirect, tWSBalancer, tReverseProxy, tHAProxy, tNginx}

// knownTargets are the targets -targets accepts.
var knownTargets = append(allTargets[:len(allTargets):len(allTargets)], tWSBalancerBase)

// isCaddy: the target is a Caddy process (with an admin endpoint).
func isCaddy(target string) bool {
	return target == tWSBalancer || target == tWSBalancerBase || target == tReverseProxy
}

// ---------------------------------------------------------------- children

// children is the registry of every process the tool starts; killAll sends
// SIGKILL to each one's process group, and to the proxies' groups, on every
// exit path of the tool but SIGKILL. For that one, each direct child gets a
// parent-death signal, and the proxies run under a guard (see runGuard) that
// kills the proxy's whole group (nginx workers included) when the tool dies.
var children struct {
	mu     sync.Mutex
	procs  map[int]*exec.Cmd
	groups map[int]bool
}

func startChild(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// Own process group, so that the proxy and its workers can be signalled
	// together; SIGKILL (unless set otherwise) if the tool dies.
	cmd.SysProcAttr.Setpgid = true
	if cmd.SysProcAttr.Pdeathsig == 0 {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	children.mu.Lock()
	if children.procs == nil {
		children.procs = map[int]*exec.Cmd{}
	}
	children.procs[cmd.Process.Pid] = cmd
	children.mu.Unlock()
	return nil
}

func forgetChild(pid int) {
	children.mu.Lock()
	delete(children.procs, pid)
	children.mu.Unlock()
}

func addGroup(pgid int) {
	children.mu.Lock()
	if children.groups == nil {
		children.groups = map[int]bool{}
	}
	children.groups[pgid] = true
	children.mu.Unlock()
}

func forgetGroup(pgid int) {
	children.mu.Lock()
	delete(children.groups, pgid)
	children.mu.Unlock()
}

func killAll() {
	children.mu.Lock()
	defer children.mu.Unlock()
	for pgid := range children.groups {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		delete(children.groups, pgid)
	}
	for pid := range children.procs {
		_ = syscall.Kill(-pid, syscall.SIGKILL)
	}
	for pid, cmd := range children.procs {
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
		}
		delete(children.procs, pid)
	}
}

// ----------------------------------------------------------------- backend

type backendProc struct {
	cmd   *exec.Cmd
	addrs []string
	stdin io.WriteCloser
}

// startBackend starts `self -role backend` and reads the addresses it
// listens on.
func startBackend(ctx context.Context, listen string, logPath string) (*backendProc, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, "-role", "backend", "-listen", listen)
	cmd.Env = childEnv(nil)
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd.Stderr = logf
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := startChild(cmd); err != nil {
		return nil, err
	}
	b := &backendProc{cmd: cmd, stdin: stdin}
	type res struct {
		addrs []string
		err   error
	}
	ch := make(chan res, 1)
	go func() {
		var addrs []string
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			if a, ok := strings.CutPrefix(line, "LISTEN "); ok {
				addrs = append(addrs, a)
			}
			if line == "READY" {
				ch <- res{addrs: addrs}
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
		}
		ch <- res{err: fmt.Errorf("backend exited before READY (see %s)", logPath)}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			b.stop()
			return nil, r.err
		}
		b.addrs = r.addrs
		return b, nil
	case <-time.After(15 * time.Second):
		b.stop()
		return nil, errors.New("backend did not start within 15s")
	case <-ctx.Done():
		b.stop()
		return nil, ctx.Err()
	}
}

func (b *backendProc) pid() int { return b.cmd.Process.Pid }

func (b *backendProc) stop() {
	_ = b.stdin.Close()
	stopGroup(b.cmd, 5*time.Second)
}

// stopGroup sends SIGTERM to the process group of cmd, waits up to grace for
// the leader to exit, then SIGKILLs the whole group (workers included).
func stopGroup(cmd *exec.Cmd, grace time.Duration) {
	pid := cmd.Process.Pid
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
	}
	forgetChild(pid)
}

// childEnv returns the environment for children: ours, minus variables that
// would change the proxies' behaviour between targets, plus extra.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "GOMAXPROCS", "GOGC", "GOMEMLIMIT", "GODEBUG":
			continue
		}
		env = append(env, kv)
	}
	return append(env, extra...)
}

// ------------------------------------------------------------------ proxies

// tools holds the paths of the proxy binaries found or built.
type tools struct {
	caddy, haproxy, nginx string
	baseCaddy             string // -base-caddy
	// tls, when set, serves the proxies over TLS (-tls).
	tls *tlsFiles
}

// proxyProc is a proxy started under a guard process (see runGuard).
type proxyProc struct {
	name      string
	tls       bool
	guard     *exec.Cmd
	guardIn   io.WriteCloser
	pgid      int    // the proxy's pid, leader of its own process group
	adminPort int    // Caddy's admin endpoint (0 for the others)
	addr      string // host:port the proxy listens on
	logPath   string
	exited    chan struct{} // the guard exited, which it does when the proxy exits
	waitErr   error
	stopOnce  sync.Once
}

// pid returns the proxy's pid (= its process group id).
func (p *proxyProc) pid() int { return p.pgid }

func (p *proxyProc) url() string {
	if p.tls {
		return "wss://" + p.addr + "/"
	}
	return "ws://" + p.addr + "/"
}

// stop sends SIGTERM to the proxy's process group, waits up to 5 s for the
// proxy to exit, then SIGKILLs the group (leftover workers included).
func (p *proxyProc) stop() {
	p.stopOnce.Do(func() {
		select {
		case <-p.exited:
		default:
			_ = syscall.Kill(-p.pgid, syscall.SIGTERM)
			select {
			case <-p.exited:
			case <-time.After(5 * time.Second):
			}
		}
		_ = p.guardIn.Close() // the guard SIGKILLs the group and exits
		_ = syscall.Kill(-p.pgid, syscall.SIGKILL)
		select {
		case <-p.exited:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-p.guard.Process.Pid, syscall.SIGKILL)
		}
		forgetGroup(p.pgid)
		forgetChild(p.guard.Process.Pid)
	})
}

// runGuard is the `-role guard -log FILE -- PROG ARGS...` child: it starts
// PROG in its own process group with output to FILE, prints "PID <pid>", and
// exits with PROG's status when PROG exits. When its standard input closes
// (the tool is gone, even by SIGKILL) or it gets SIGTERM (its parent-death
// signal), it SIGKILLs PROG's whole process group first.
func runGuard(logPath string, argv []string) int {
	if len(argv) == 0 {
		fmt.Fprintln(os.Stderr, "guard: no command")
		return 2
	}
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guard: %v\n", err)
		return 2
	}
	defer logf.Close()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(logf, "guard: start %s: %v\n", argv[0], err)
		return 127
	}
	pid := cmd.Process.Pid
	fmt.Printf("PID %d\n", pid)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	eof := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(eof)
	}()
	select {
	case err := <-exited:
		_ = syscall.Kill(-pid, syscall.SIGKILL) // leftover workers
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			fmt.Fprintf(logf, "guard: %s exited: %v\n", argv[0], err)
			if c := ee.ExitCode(); c > 0 {
				return c
			}
			return 1
		}
		return 0
	case <-eof:
	case <-sig:
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
	}
	return 0
}

func (p *proxyProc) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort asks the kernel for a free TCP port on 127.0.0.1.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

type tmplData struct {
	Port      int
	AdminPort int
	Backends  []string
	Dir       string
	MaxConn   uint64
	NoFile    uint64
	Threads   int
	TLS       *tlsFiles
	// OrderLine adds the global order line that builds from before the
	// directive registered its own order (late November 2026) require.
	OrderLine bool
}

// CertFile, KeyFile and CombinedFile are the -tls certificate's files.
func (d tmplData) CertFile() string     { return d.TLS.cert }
func (d tmplData) KeyFile() string      { return d.TLS.key }
func (d tmplData) CombinedFile() string { return d.TLS.combined }

func (d tmplData) BackendList() string { return strings.Join(d.Backends, " ") }

// TLSCipher is the TLS 1.3 cipher suite HAProxy and nginx are held to
// (Go chooses the same by itself).
func (d tmplData) TLSCipher() string { return tlsCipherSuite }

// caddyGlobalHTTPS and caddySiteAddr: with -tls, sites serve HTTPS with the
// tool's certificate, as HAProxy and nginx do; otherwise plain HTTP.
const caddyGlobalHTTPS = `{{if .TLS}}	auto_https disable_redirects
	skip_install_trust{{else}}	auto_https off{{end}}`

const caddySiteAddr = `{{if .TLS}}https://127.0.0.1:{{.Port}}{{else}}:{{.Port}}{{end}} {
	bind 127.0.0.1{{if .TLS}}
	tls {{.CertFile}} {{.KeyFile}}{{end}}`

var caddyWSBalancerTmpl = template.Must(template.New("ws_balancer").Parse(`{
	admin 127.0.0.1:{{.AdminPort}}{{if .OrderLine}}
	order ws_balancer before respond{{end}}
` + caddyGlobalHTTPS + `
	persist_config off
}
` + caddySiteAddr + `
	ws_balancer {
		backends {{.BackendList}}
	}
}
`))

var caddyReverseProxyTmpl = template.Must(template.New("reverse_proxy").Parse(`{
	admin 127.0.0.1:{{.AdminPort}}
` + caddyGlobalHTTPS + `
	persist_config off
}
` + caddySiteAddr + `
	reverse_proxy {{.BackendList}} {
		lb_policy least_conn
	}
}
`))

var haproxyTmpl = template.Must(template.New("haproxy").Parse(`global
	maxconn {{.MaxConn}}
	nbthread {{.Threads}}{{if .TLS}}
	ssl-default-bind-options ssl-min-ver TLSv1.2
	ssl-default-bind-ciphersuites {{.TLSCipher}}{{end}}

defaults
	mode http
	maxconn {{.MaxConn}}
	timeout connect 5s
	timeout client 1h
	timeout server 1h
	timeout http-request 10s
	timeout tunnel 1h

frontend fe
	bind 127.0.0.1:{{.Port}}{{if .TLS}} ssl crt {{.CombinedFile}}{{end}}
	default_backend be

backend be
	balance leastconn
{{- range $i, $b := .Backends}}
	server s{{$i}} {{$b}}
{{- end}}
`))

var nginxTmpl = template.Must(template.New("nginx").Parse(`worker_processes {{.Threads}};
worker_rlimit_nofile {{.NoFile}};
pid {{.Dir}}/nginx.pid;
user root;

events {
	worker_connections {{.NoFile}};
}

http {
	access_log off;
	client_body_temp_path {{.Dir}}/client_body;
	proxy_temp_path {{.Dir}}/proxy;
	fastcgi_temp_path {{.Dir}}/fastcgi;
	uwsgi_temp_path {{.Dir}}/uwsgi;
	scgi_temp_path {{.Dir}}/scgi;

	map $http_upgrade $connection_upgrade {
		default upgrade;
		''      close;
	}

	upstream be {
		least_conn;
		zone be 64k; # connection counts shared by the workers
{{- range .Backends}}
		server {{.}};
{{- end}}
	}

	server {
		listen 127.0.0.1:{{.Port}}{{if .TLS}} ssl{{end}} backlog=4096;{{if .TLS}}
		ssl_certificate {{.CertFile}};
		ssl_certificate_key {{.KeyFile}};
		ssl_protocols TLSv1.2 TLSv1.3; # 1.22 offers up to TLS 1.2 without this
		ssl_conf_command Ciphersuites {{.TLSCipher}};{{end}}
		location / {
			proxy_pass http://be;
			proxy_http_version 1.1;
			proxy_set_header Upgrade $http_upgrade;
			proxy_set_header Connection $connection_upgrade;
			proxy_set_header Host $host;
			proxy_read_timeout 1h;
			proxy_send_timeout 1h;
		}
	}
}
`))

// startProxy writes the target's config into a fresh directory under
// workdir and starts the proxy in the foreground, in its own process group.
func startProxy(name string, tl tools, workdir string, backends []string, nofile uint64, rep int) (*proxyProc, error) {
	dir := filepath.Join(workdir, fmt.Sprintf("%s-rep%d", name, rep))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	maxConn := (nofile - 200) / 2
	if nofile < 1000 {
		maxConn = nofile / 2
	}
	d := tmplData{
		Port: port, AdminPort: admin, Backends: backends, Dir: dir,
		MaxConn: maxConn, NoFile: nofile, Threads: 2, TLS: tl.tls,
	}

	var (
		tmpl *template.Template
		conf string
		cmd  *exec.Cmd
	)
	switch name {
	case tWSBalancer, tWSBalancerBase, tReverseProxy:
		bin := tl.caddy
		tmpl = caddyReverseProxyTmpl
		if name != tReverseProxy {
			tmpl = caddyWSBalancerTmpl
		}
		if name == tWSBalancerBase {
			bin = tl.baseCaddy
			d.OrderLine = true
		}
		conf = filepath.Join(dir, "Caddyfile")
		cmd = exec.Command(bin, "run", "--config", conf, "--adapter", "caddyfile")
		cmd.Env = childEnv([]string{
			"HOME=" + dir,
			"XDG_DATA_HOME=" + filepath.Join(dir, "data"),
			"XDG_CONFIG_HOME=" + filepath.Join(dir, "config"),
		})
	case tHAProxy:
		tmpl = haproxyTmpl
		conf = filepath.Join(dir, "haproxy.cfg")
		cmd = exec.Command(tl.haproxy, "-db", "-f", conf)
		cmd.Env = childEnv(nil)
	case tNginx:
		tmpl = nginxTmpl
		conf = filepath.Join(dir, "nginx.conf")
		cmd = exec.Command(tl.nginx, "-p", dir+"/", "-c", conf, "-e", filepath.Join(dir, "error.log"), "-g", "daemon off;")
		cmd.Env = childEnv(nil)
	default:
		return nil, fmt.Errorf("unknown target %q", name)
	}
	f, err := os.Create(conf)
	if err != nil {
		return nil, err
	}
	if err := tmpl.Execute(f, d); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, err
	}

	logPath := filepath.Join(dir, "output.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	g := exec.Command(self, append([]string{"-role", "guard", "-log", logPath, "--", cmd.Path}, cmd.Args[1:]...)...)
	g.Env, g.Dir, g.Stderr = cmd.Env, dir, logf
	g.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdout, err := g.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := g.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := startChild(g); err != nil {
		return nil, err
	}
	p := &proxyProc{name: name, tls: tl.tls != nil, guard: g, guardIn: stdin, addr: "127.0.0.1:" + strconv.Itoa(port), logPath: logPath, exited: make(chan struct{})}
	if isCaddy(name) {
		p.adminPort = admin
	}
	pidc := make(chan int, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "PID "); ok {
				if n, err := strconv.Atoi(s); err == nil {
					pidc <- n
				}
			}
		}
		p.waitErr = g.Wait()
		close(p.exited)
	}()
	select {
	case p.pgid = <-pidc:
		addGroup(p.pgid)
		return p, nil
	case <-p.exited:
		forgetChild(g.Process.Pid)
		return nil, fmt.Errorf("%s did not start (%v); log tail:\n%s", name, p.waitErr, p.logTail(15))
	case <-time.After(10 * time.Second):
		_ = stdin.Close()
		_ = syscall.Kill(-g.Process.Pid, syscall.SIGKILL)
		forgetChild(g.Process.Pid)
		return nil, fmt.Errorf("%s: guard did not report the pid within 10s", name)
	}
}

// waitReady probes the proxy (a WebSocket echo through it) until it answers,
// the proxy exits, or timeout passes.
func (p *proxyProc) waitReady(ctx context.Context, lc *loadClient, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited (%v) before answering; log tail:\n%s", p.name, p.waitErr, p.logTail(15))
		default:
		}
		if last = probe(ctx, lc, p.url(), 2*time.Second); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not answering after %v: %v; log tail:\n%s", p.name, timeout, last, p.logTail(15))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// -------------------------------------------------------- finding binaries

// lookBin finds a binary in PATH or in the sbin directories, which are not
// always in a non-login PATH.
func lookBin(name string) string {
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, d := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// findRepoRoot walks up from the working directory to the go.mod of this
// module.
func findRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.Contains(string(b), "module github.com/wsbalancer/caddy-wsbalancer") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run from inside the caddy-wsbalancer module (go.mod not found)")
		}
		dir = parent
	}
}

// buildCaddy builds ./cmd/caddy of the repository into dir.
func buildCaddy(ctx context.Context, dir string) (string, error) {
	root, err := findRepoRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "caddy")
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/caddy")
	cmd.Dir = root
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build ./cmd/caddy: %v\n%s", err, strings.TrimSpace(string(b)))
	}
	return out, nil
}

// caddyHasModule reports whether `caddy list-modules` lists a module whose
// name contains mod.
func caddyHasModule(ctx context.Context, caddy, mod string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, caddy, "list-modules").Output()
	if err != nil {
		return false, fmt.Errorf("%s list-modules: %v", caddy, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(strings.TrimSpace(line), mod) {
			return true, nil
		}
	}
	return false, nil
}

// versionOf runs `bin args...` and returns the first line of its output.
func versionOf(bin string, args ...string) string {
	if bin == "" {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, _ := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	s, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(s)
}
