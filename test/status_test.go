package test

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// runChromium runs headless Chromium with args plus url and returns its
// standard output.
func runChromium(t *testing.T, ctx context.Context, bin string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	base := append(harness.ChromiumFlags[:len(harness.ChromiumFlags):len(harness.ChromiumFlags)], "--user-data-dir="+t.TempDir())
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("chromium %v: %v\n%s", args, err, stderr)
	}
	// Chromium leaves helper processes in its group at times.
	if cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	return string(out)
}

// statusRow finds a backend's row in the page's DOM: its state and live
// count.
func statusRow(dom, addr string) (state string, live int, ok bool) {
	re := regexp.MustCompile(`<tr data-backend="` + regexp.QuoteMeta(addr) +
		`">.*?<td class="state"><span class="st-[a-z]+">([a-z]+)</span></td><td class="live">(\d+)</td>`)
	m := re.FindStringSubmatch(dom)
	if m == nil {
		return "", 0, false
	}
	n, _ := strconv.Atoi(m[2])
	return m[1], n, true
}

var pollsRe = regexp.MustCompile(`id="updated" data-polls="(\d+)"`)

// The status page, loaded in headless Chromium, shows each backend's state
// and live count, draws the chart, and updates itself by polling its JSON.
func TestStatusPageInBrowser(t *testing.T) {
	bin := harness.Chromium(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bs := startEchoes(t, 2, harness.EchoOptions{})
	body := "\troute /status {\n\t\tws_balancer_status {\n\t\t\tinterval 250ms\n\t\t}\n\t}\n" + site(bs, "")
	caddy := harness.StartCaddy(t, body)
	if status, out, err := caddy.Admin(http.MethodPost, "/ws_balancer/backends/"+bs[1].Addr+"/drain"); err != nil || status != http.StatusOK {
		t.Fatalf("drain: %d %s %v", status, out, err)
	}
	dialMany(t, ctx, caddy.URL("/ws"), 7, 4)
	waitLive(t, ctx, bs, []int64{7, 0})
	time.Sleep(600 * time.Millisecond) // a few samples for the chart

	page := "http://" + caddy.Addr() + "/status"
	// JSON first.
	resp, err := http.Get(page + "?format=json")
	if err != nil {
		t.Fatal(err)
	}
	var data struct {
		Backends []struct {
			Address string `json:"address"`
			State   string `json:"state"`
			Live    int64  `json:"live"`
		} `json:"backends"`
		Times  []int64            `json:"times"`
		Series map[string][]int64 `json:"series"`
	}
	err = json.NewDecoder(resp.Body).Decode(&data)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if len(data.Backends) != 2 || len(data.Times) < 2 || len(data.Series) != 2 {
		t.Fatalf("status JSON: %+v", data)
	}

	shot := filepath.Join(t.ArtifactDir(), "status.png")
	runChromium(t, ctx, bin, "--window-size=900,700", "--virtual-time-budget=2000", "--screenshot="+shot, page)
	if st, err := os.Stat(shot); err != nil || st.Size() < 5000 {
		t.Errorf("screenshot %s: %v (size %v)", shot, err, st)
	} else {
		t.Logf("screenshot: %s (%d bytes)", shot, st.Size())
	}

	check := func(wantA int) {
		t.Helper()
		dom := runChromium(t, ctx, bin, "--virtual-time-budget=3000", "--dump-dom", page)
		stA, liveA, okA := statusRow(dom, bs[0].Addr)
		stB, liveB, okB := statusRow(dom, bs[1].Addr)
		if !okA || !okB {
			t.Fatalf("backend rows missing from the DOM:\n%s", dom)
		}
		if stA != "up" || liveA != wantA || stB != "draining" || liveB != 0 {
			t.Errorf("page shows %s %s/%d and %s %s/%d, want up/%d and draining/0",
				bs[0].Addr, stA, liveA, bs[1].Addr, stB, liveB, wantA)
		}
		m := pollsRe.FindStringSubmatch(dom)
		if m == nil || m[1] == "0" {
			t.Errorf("the page did not update itself from its JSON (polls %v)", m)
		}
		if n := regexp.MustCompile(`<polyline `).FindAllStringIndex(dom, -1); len(n) != 2 {
			t.Errorf("chart has %d lines, want 2", len(n))
		}
		t.Logf("DOM shows %s up/%d, %s %s/%d after %s polls", bs[0].Addr, liveA, bs[1].Addr, stB, liveB, m[1])
	}
	check(7)
	dialMany(t, ctx, caddy.URL("/ws"), 5, 4)
	waitLive(t, ctx, bs, []int64{12, 0})
	check(12)
}
