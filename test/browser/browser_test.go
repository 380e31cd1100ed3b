// Package browser runs assign mode from a real browser: headless Chromium
// loads a page served by Caddy, the page asks /assign for a backend with
// fetch, opens a WebSocket to the URL it got (the token in its query) and
// exchanges a message. The test drives Chromium through the DevTools
// protocol, with nothing but gorilla/websocket.
//
// It needs Chromium: apt-get install -y chromium (/usr/bin/chromium), or
// $WSB_CHROMIUM naming another binary. Without one it skips.
package browser

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func TestBrowserAssignAndConnect(t *testing.T) {
	bin := harness.Chromium(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	start := time.Now()

	key := harness.WriteSigningKey(t)
	var pageOrigin atomic.Value
	pageOrigin.Store("")
	be := harness.StartTokenEcho(t, harness.TokenEchoOptions{
		Keys: []token.Key{key.Pub},
		// A real backend accepts WebSockets only from its own pages.
		CheckOrigin: func(r *http.Request) bool { return r.Header.Get("Origin") == pageOrigin.Load().(string) },
	})
	root := filepath.Join(harness.RepoRoot(), "test", "browser", "testdata")
	site := fmt.Sprintf("\tws_balancer /assign {\n\t\tmode assign\n\t\tbackends %s\n\t\ttoken_key %s\n\t}\n\troot * %s\n\tfile_server\n",
		be.URL, key.Path, root)
	caddy := harness.StartCaddy(t, site)
	origin := "http://" + caddy.Addr()
	pageOrigin.Store(origin)
	caddyUp := time.Since(start)

	page := startChromium(t, ctx, bin, origin+"/")
	browserUp := time.Since(start)
	if err := page.waitFor(ctx, `typeof run === "function" && document.readyState === "complete"`); err != nil {
		t.Fatal(err)
	}
	raw, err := page.evaluate(ctx, "run()")
	if err != nil {
		t.Fatalf("running the page's client: %v", err)
	}
	var got struct {
		Backend   string    `json:"backend"`
		ExpiresAt time.Time `json:"expires_at"`
		URL       string    `json:"url"`
		Reply     string    `json:"reply"`
	}
	if err := json.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatalf("page returned %q: %v", raw, err)
	}
	t.Logf("page: %s", raw)
	if got.Reply != "hello from the browser" || got.Backend != be.ID || !strings.HasPrefix(got.URL, be.URL+"?token=") {
		t.Errorf("page result %+v", got)
	}
	if until := time.Until(got.ExpiresAt); until <= 0 || until > token.DefaultTTL+time.Second {
		t.Errorf("expires_at %s is %s away", got.ExpiresAt, until)
	}
	if n := len(be.Subjects()); n != 1 || be.Rejects.Total() != 0 {
		t.Errorf("backend accepted %d connections and rejected %v, want 1 and none", n, be.Rejects.Counts())
	}
	t.Logf("timings: Caddy up %s, Chromium up %s, total %s", caddyUp.Round(time.Millisecond),
		browserUp.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// cdpPage is a page of a headless Chromium, driven through the DevTools
// protocol.
type cdpPage struct {
	conn   *websocket.Conn
	nextID int
}

// startChromium starts headless Chromium on url, stopped with the test, and
// connects to the page's DevTools endpoint.
func startChromium(t *testing.T, ctx context.Context, bin, url string) *cdpPage {
	t.Helper()
	dir := t.TempDir()
	var log bytes.Buffer
	args := append(slices.Clone(harness.ChromiumFlags), "--user-data-dir="+dir,
		"--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--remote-allow-origins=*", url)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &log, &log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})

	// Chromium writes the port it chose to DevToolsActivePort.
	var port int
	if !harness.WaitFor(ctx, 30*time.Second, func() bool {
		b, err := os.ReadFile(filepath.Join(dir, "DevToolsActivePort"))
		if err != nil {
			return false
		}
		line, _, _ := strings.Cut(string(b), "\n")
		port, err = strconv.Atoi(strings.TrimSpace(line))
		return err == nil && port > 0
	}) {
		t.Fatalf("Chromium did not open its DevTools port within 30s:\n%s", log.String())
	}

	var wsURL string
	if !harness.WaitFor(ctx, 30*time.Second, func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(port) + "/json/list")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var targets []struct {
			Type, URL            string
			WebSocketDebuggerURL string `json:"webSocketDebuggerUrl"`
		}
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, url) {
				wsURL = tg.WebSocketDebuggerURL
				return true
			}
		}
		return false
	}) {
		t.Fatalf("no DevTools page target for %s:\n%s", url, log.String())
	}
	c, _, err := websocket.DefaultDialer.DialContext(ctx, wsURL, nil)
	if err != nil {
		t.Fatalf("connecting to DevTools: %v", err)
	}
	c.SetReadLimit(16 << 20)
	t.Cleanup(func() { c.Close() })
	return &cdpPage{conn: c}
}

// evaluate runs a JavaScript expression in the page, awaiting it if it is
// a promise, and returns its value as a string.
func (p *cdpPage) evaluate(ctx context.Context, expr string) (string, error) {
	p.nextID++
	id := p.nextID
	req := map[string]any{
		"id": id, "method": "Runtime.evaluate",
		"params": map[string]any{"expression": expr, "awaitPromise": true, "returnByValue": true},
	}
	deadline, _ := ctx.Deadline()
	p.conn.SetWriteDeadline(deadline)
	if err := p.conn.WriteJSON(req); err != nil {
		return "", fmt.Errorf("sending Runtime.evaluate: %w", err)
	}
	p.conn.SetReadDeadline(deadline)
	for {
		var msg struct {
			ID     int `json:"id"`
			Result struct {
				Result struct {
					Type  string          `json:"type"`
					Value json.RawMessage `json:"value"`
				} `json:"result"`
				ExceptionDetails *struct {
					Text      string `json:"text"`
					Exception struct {
						Description string `json:"description"`
					} `json:"exception"`
				} `json:"exceptionDetails"`
			} `json:"result"`
			Error *struct {
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := p.conn.ReadJSON(&msg); err != nil {
			return "", fmt.Errorf("reading from DevTools: %w", err)
		}
		if msg.ID != id {
			continue // an event
		}
		switch {
		case msg.Error != nil:
			return "", errors.New(msg.Error.Message)
		case msg.Result.ExceptionDetails != nil:
			d := msg.Result.ExceptionDetails
			return "", fmt.Errorf("%s %s", d.Text, d.Exception.Description)
		}
		var s string
		if err := json.Unmarshal(msg.Result.Result.Value, &s); err != nil {
			return string(msg.Result.Result.Value), nil
		}
		return s, nil
	}
}

// waitFor evaluates cond until it is true.
func (p *cdpPage) waitFor(ctx context.Context, cond string) error {
	for {
		v, err := p.evaluate(ctx, cond)
		if err != nil {
			return err
		}
		if v == "true" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", cond, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
