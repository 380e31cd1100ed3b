package browser

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// affinityPage connects through /ws, returns the backend's greeting (its
// address) and closes.
const affinityPage = `<!doctype html><html><body><script>
function connect() {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket("ws://" + location.host + "/ws");
    ws.onmessage = (e) => { resolve(e.data); ws.close(); };
    ws.onerror = () => reject("websocket error");
  });
}
</script></body></html>`

// A page connects, disconnects and reconnects, and
// lands on the same backend through the sticky cookie; once that backend
// is drained, it lands elsewhere.
func TestBrowserAffinityCookie(t *testing.T) {
	bin := harness.Chromium(t)
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	var ids []string
	for range 3 {
		addr := fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t))
		harness.StartEcho(t, harness.EchoOptions{Addr: addr, Hello: addr})
		ids = append(ids, addr)
	}
	site := fmt.Sprintf("\tws_balancer /ws {\n\t\tbackends %s\n\t\taffinity {\n\t\t\tcookie wsb_affinity\n\t\t}\n\t}\n\theader Content-Type text/html\n\trespond `%s` 200\n",
		strings.Join(ids, " "), affinityPage)
	caddy := harness.StartCaddy(t, site)
	page := startChromium(t, ctx, bin, "http://"+caddy.Addr()+"/")
	if err := page.waitFor(ctx, `typeof connect === "function" && document.readyState === "complete"`); err != nil {
		t.Fatal(err)
	}
	// connect returns once the balancer has counted the connection's
	// close: a reconnection that arrived first would find its backend at
	// the bounded-load limit of a fleet holding one connection (the
	// closing one), and rightly go elsewhere. That is the bound at work,
	// not the cookie failing.
	connect := func() string {
		t.Helper()
		raw, err := page.evaluate(ctx, "connect()")
		if err != nil {
			t.Fatalf("connecting from the page: %v", err)
		}
		closed := harness.WaitFor(ctx, 10*time.Second, func() bool {
			s, err := caddy.Backends()
			return err == nil && s.TotalLive == 0
		})
		if !closed {
			t.Fatal("the balancer still counts the page's closed connection after 10 s")
		}
		return strings.Trim(raw, `"`)
	}
	first := connect()
	var got []string
	for range 5 {
		got = append(got, connect())
	}
	t.Logf("first connection on %s; reconnections on %v", first, got)
	for _, b := range got {
		if b != first {
			t.Fatalf("reconnection landed on %s, not %s", b, first)
		}
	}
	status, body, err := caddy.Admin(http.MethodPost, "/ws_balancer/backends/"+first+"/drain")
	if err != nil || status/100 != 2 {
		t.Fatalf("draining %s: %d %s %v", first, status, body, err)
	}
	after := connect()
	t.Logf("after draining %s: on %s", first, after)
	if after == first {
		t.Errorf("landed on the drained backend %s", first)
	}
	if again := connect(); again != after {
		t.Errorf("after the drain, the new cookie did not hold: %s then %s", after, again)
	}
}
