package harness

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// binary is one build of a command of this module, made on first use.
type binary struct {
	once sync.Once
	path string
	err  error
}

var (
	caddyRace, caddyPlain, wsecho, assignBurst binary
)

func (b *binary) build(t testing.TB, pkg string, race bool) string {
	t.Helper()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "wsb-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, filepath.Base(pkg))
		args := []string{"build", "-o", b.path}
		if race {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, pkg)...)
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("building %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// CaddyBinary returns the path of a Caddy built with the module, with the
// race detector when the tests run with it, building it on first use.
// $WSB_CADDY_BIN overrides it (e.g. an xcaddy build).
func CaddyBinary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("WSB_CADDY_BIN"); p != "" {
		return p
	}
	if raceEnabled {
		return caddyRace.build(t, "./cmd/caddy", true)
	}
	return caddyPlain.build(t, "./cmd/caddy", false)
}

// CaddyBinaryNoRace is CaddyBinary without the race detector, for tests
// holding more connections than its limit of 8128 live goroutines allows.
func CaddyBinaryNoRace(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("WSB_CADDY_BIN"); p != "" {
		return p
	}
	return caddyPlain.build(t, "./cmd/caddy", false)
}

// WSEchoBinary returns the path of cmd/wsecho, the demo echo backend.
func WSEchoBinary(t testing.TB) string {
	t.Helper()
	return wsecho.build(t, "./cmd/wsecho", false)
}

// AssignBurstBinary returns the path of test/assignburst, the assign-mode
// burst client, built without the race detector.
func AssignBurstBinary(t testing.TB) string {
	t.Helper()
	return assignBurst.build(t, "./test/assignburst", false)
}

// RepoRoot is the module's root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// FreePort returns a loopback port that was free a moment ago. It is drawn
// below the kernel's ephemeral range (32768 and up by default), so that the
// many outgoing connections of a concurrent test or benchmark cannot take it
// between this check and its use.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			ln.Close()
			return port
		}
	}
	t.Fatal("no free port found in 20000-31999")
	return 0
}

// Caddy is a running Caddy process. Like every child of the harness, it
// fails its test if it races, panics or ends abnormally (see Process).
type Caddy struct {
	t         testing.TB
	proc      *Process
	dir       string
	HTTPPort  int
	AdminPort int
	// TLS: the site is served over HTTPS with Caddy's internal CA
	// (StartCaddyTLS); URL gives wss:// URLs.
	TLS bool
}

// SiteConfig is the body of the test site; {backends} and the like are
// filled by the test with fmt before calling StartCaddy.
//
// StartCaddy starts Caddy with a Caddyfile made of global options (admin on
// a free port, ws_balancer ordered, no HTTPS) and the given site body on a
// free HTTP port. It waits until the site answers.
func StartCaddy(t testing.TB, siteBody string) *Caddy {
	t.Helper()
	return StartCaddyBinary(t, CaddyBinary(t), siteBody)
}

// StartCaddyTLS is StartCaddy with the site served over HTTPS (a
// certificate from Caddy's internal CA, which clients must not verify:
// Dialer skips verification for it).
func StartCaddyTLS(t testing.TB, siteBody string) *Caddy {
	t.Helper()
	return startCaddy(t, CaddyBinary(t), siteBody, true)
}

// StartCaddyBinary is StartCaddy with a given Caddy binary.
func StartCaddyBinary(t testing.TB, bin, siteBody string) *Caddy {
	t.Helper()
	return startCaddy(t, bin, siteBody, false)
}

func startCaddy(t testing.TB, bin, siteBody string, tls bool) *Caddy {
	t.Helper()
	c := &Caddy{t: t, HTTPPort: FreePort(t), AdminPort: FreePort(t), TLS: tls}
	c.dir = t.TempDir()
	if err := os.WriteFile(c.configPath(), []byte(c.Caddyfile(siteBody)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config", c.configPath(), "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "HOME="+c.dir, "XDG_DATA_HOME="+c.dir, "XDG_CONFIG_HOME="+c.dir)
	c.proc = StartCmd(t, cmd)
	// Registered after StartCmd's check, so it runs before it: Caddy
	// shuts down gracefully, and the check sees how that went.
	t.Cleanup(c.Stop)
	c.waitReady()
	return c
}

// Caddyfile is the whole config StartCaddy uses for siteBody.
func (c *Caddy) Caddyfile(siteBody string) string {
	https, scheme, tls := "auto_https off", "http", ""
	if c.TLS {
		// Explicit https site with the internal CA; no redirect listener
		// on :80, no trust store changes.
		https, scheme, tls = "auto_https disable_redirects\n\tskip_install_trust", "https", "\ttls internal\n"
	}
	return fmt.Sprintf(`{
	admin 127.0.0.1:%d
	order ws_balancer before respond
	%s
	persist_config off
	grace_period 1s
	servers {
		timeouts {
			read_header 3s
		}
	}
}

%s://127.0.0.1:%d {
	bind 127.0.0.1
%s%s
}
`, c.AdminPort, https, scheme, c.HTTPPort, tls, siteBody)
}

func (c *Caddy) configPath() string { return filepath.Join(c.dir, "Caddyfile") }

func (c *Caddy) waitReady() {
	c.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-c.proc.Done():
			c.t.Fatalf("caddy exited at start:\n%s", c.Log())
		default:
		}
		conn, err := net.DialTimeout("tcp", c.Addr(), 200*time.Millisecond)
		if err == nil && c.TLS {
			// Listening is not enough: the internal CA issues the site's
			// certificate in the background, and until then handshakes
			// fail.
			tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, ServerName: "127.0.0.1"})
			tc.SetDeadline(time.Now().Add(time.Second))
			err = tc.Handshake()
		}
		if conn != nil {
			conn.Close()
		}
		if err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.t.Fatalf("caddy not ready after 60s:\n%s", c.Log())
}

// Addr is the site's host:port.
func (c *Caddy) Addr() string { return "127.0.0.1:" + strconv.Itoa(c.HTTPPort) }

// URL is the site's ws:// (wss:// with TLS) URL for path.
func (c *Caddy) URL(path string) string {
	if c.TLS {
		return "wss://" + c.Addr() + path
	}
	return "ws://" + c.Addr() + path
}

// Log returns what Caddy has logged so far.
func (c *Caddy) Log() string { return c.proc.Output() }

// Reload loads a new site body through the admin API, as `caddy reload` does.
func (c *Caddy) Reload(siteBody string) error {
	req, err := http.NewRequest(http.MethodPost, c.adminURL("/load"), strings.NewReader(c.Caddyfile(siteBody)))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "text/caddyfile")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("posting config: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("reload: %s: %s", resp.Status, body)
	}
	return nil
}

func (c *Caddy) adminURL(path string) string {
	return "http://127.0.0.1:" + strconv.Itoa(c.AdminPort) + path
}

// BackendStatus is one entry of GET /ws_balancer/backends.
type BackendStatus struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	State    string `json:"state"`
	Live     int64  `json:"live"`
	Load     int64  `json:"load"`
	Reported *int64 `json:"reported"`
}

// BackendsStatus is the admin API's answer.
type BackendsStatus struct {
	Backends  []BackendStatus `json:"backends"`
	TotalLive int64           `json:"total_live"`
}

// Backends queries the admin API.
func (c *Caddy) Backends() (BackendsStatus, error) {
	var s BackendsStatus
	resp, err := http.Get(c.adminURL("/ws_balancer/backends"))
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return s, fmt.Errorf("admin: %s: %s", resp.Status, b)
	}
	return s, json.NewDecoder(resp.Body).Decode(&s)
}

var goroutineTotal = regexp.MustCompile(`goroutine profile: total (\d+)`)

// Goroutines counts the goroutines in the Caddy process (pprof on the admin
// endpoint).
func (c *Caddy) Goroutines() (int, error) {
	resp, err := http.Get(c.adminURL("/debug/pprof/goroutine?debug=1"))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	m := goroutineTotal.FindSubmatch(b)
	if m == nil {
		return 0, fmt.Errorf("no goroutine total in pprof answer")
	}
	return strconv.Atoi(string(m[1]))
}

// Metrics returns the admin endpoint's Prometheus metrics text.
func (c *Caddy) Metrics() (string, error) {
	resp, err := http.Get(c.adminURL("/metrics"))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// RSS is the Caddy process's resident memory in bytes.
func (c *Caddy) RSS() (int64, error) { return ProcessRSS(c.Pid()) }

// Pid is the Caddy process's ID.
func (c *Caddy) Pid() int { return c.proc.Pid() }

// ProcessRSS reads VmRSS of a process from /proc.
func ProcessRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", pid)
}

// Stop ends Caddy (SIGTERM, then SIGKILL after 5s) and waits for it.
func (c *Caddy) Stop() { c.proc.Stop() }

// WaitFor polls cond every 20ms until it holds or timeout passes.
func WaitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if cond() {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return cond()
}

// syncBuffer is a bytes.Buffer safe for the process's writers and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
