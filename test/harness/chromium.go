package harness

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// chromiumPaths are where Debian and Ubuntu install Chromium, tried when
// it is not in PATH (a test's environment may have a short one).
var chromiumPaths = []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"}

// Chromium returns the Chromium binary for browser tests, or stops t with
// Require (fails it under CI, skips it elsewhere) when there is none. It
// looks for $WSB_CHROMIUM if set (and then only for it), else chromium in
// PATH, else chromiumPaths. .ci/run looks the same way, and installs the
// Debian package chromium when this would fail.
func Chromium(t testing.TB) string {
	t.Helper()
	p, err := chromiumPath()
	if err != nil {
		Require(t, err.Error(), false)
	}
	return p
}

func chromiumPath() (string, error) {
	if p := os.Getenv("WSB_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Errorf("no Chromium at $WSB_CHROMIUM: %w", err)
		}
		return p, nil
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p, nil
	}
	for _, p := range chromiumPaths {
		if _, err := exec.LookPath(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("no Chromium: no chromium in PATH, none at %s (apt-get install -y chromium, or set WSB_CHROMIUM)",
		strings.Join(chromiumPaths, " or "))
}

// ChromiumFlags run Chromium headless, as root in a container, without
// touching the network beyond what the page asks for. Add
// --user-data-dir=<a temporary directory> and the page's URL.
var ChromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage",
}
