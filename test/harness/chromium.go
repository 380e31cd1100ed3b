package harness

import "os"

// ChromiumPath returns the Chromium binary for browser tests: $WSB_CHROMIUM,
// else Debian's /usr/bin/chromium (apt-get install -y chromium) or
// /usr/bin/chromium-browser; "" when there is none, and the test should
// skip.
func ChromiumPath() string {
	if p := os.Getenv("WSB_CHROMIUM"); p != "" {
		return p
	}
	for _, p := range []string{"/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// ChromiumFlags run Chromium headless, as root in a container, without
// touching the network beyond what the page asks for. Add
// --user-data-dir=<a temporary directory> and the page's URL.
var ChromiumFlags = []string{
	"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
	"--disable-background-networking", "--disable-component-update", "--disable-sync",
	"--disable-dev-shm-usage",
}
