package caddymodule

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver" // file_server, for the order test
	"github.com/gorilla/websocket"
)

// orderSite is written as one writes reverse_proxy: no global options, no
// order line, and a catch-all respond in the same site.
const orderSite = `:8091 {
	ws_balancer /ws* {
		backends 127.0.0.1:9101 127.0.0.1:9102
	}
	respond "page"
}
`

func TestDirectiveOrder(t *testing.T) {
	for _, tc := range []struct {
		name      string
		caddyfile string
		want      []string // handlers of the site's routes, in order
	}{
		{
			name:      "ws_balancer needs no order line and runs before respond",
			caddyfile: orderSite,
			want:      []string{"ws_balancer", "static_response"},
		},
		{
			name:      "a user's order line wins",
			caddyfile: "{\n\torder ws_balancer after respond\n}\n\n" + orderSite,
			want:      []string{"static_response", "ws_balancer"},
		},
		{
			name: "the status page runs before ws_balancer and every responder",
			caddyfile: `:8091 {
	file_server
	reverse_proxy 127.0.0.1:9200
	respond /text "text"
	ws_balancer /ws* {
		backends 127.0.0.1:9101
		reject_non_websocket
	}
	ws_balancer_status /ws-status
	error /private* 403
}
`,
			want: []string{"error", "ws_balancer_status", "ws_balancer", "static_response", "reverse_proxy", "file_server"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := adaptCaddyfile(t, tc.caddyfile)
			if got := routeHandlers(t, cfg); !slices.Equal(got, tc.want) {
				t.Errorf("handlers in order %v, want %v", got, tc.want)
			}
		})
	}
}

// The site above, on a free port, serves the page and WebSockets through
// Caddy itself, with no global options at all.
func TestSiteWithoutOrderLineServesWebSockets(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	backend := startEchoBackend(t, nil)
	base := runCaddy(t, func(port int) string {
		// The site address, on loopback only: other tests hold
		// ports on other 127.x addresses, which a wildcard bind would
		// collide with.
		return strings.NewReplacer(":8091", fmt.Sprintf("http://127.0.0.1:%d", port),
			"127.0.0.1:9101 127.0.0.1:9102", backend).Replace(orderSite)
	})
	for _, path := range []string{"/", "/ws"} { // /ws without an upgrade falls through
		resp, err := http.Get("http://" + base + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "page" {
			t.Errorf("GET %s: %d %q, want the page", path, resp.StatusCode, body)
		}
	}
	c, _, err := websocket.DefaultDialer.DialContext(ctx, "ws://"+base+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	echo(t, c, "through caddy")
}

// runCaddy runs real Caddy, in process, on the Caddyfile that site makes
// for a free port, until the test ends, and returns the host:port it
// serves. The Caddyfile itself needs no global options: the admin
// endpoint is turned off and config autosave too only to keep the test off
// the shared ones.
func runCaddy(t *testing.T, site func(port int) string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		port := freePort(t)
		cfg := adaptCaddyfile(t, site(port))
		cfg["admin"] = map[string]any{"disabled": true, "config": map[string]any{"persist": false}}
		raw, err := json.Marshal(cfg)
		if err != nil {
			t.Fatal(err)
		}
		err = caddy.Load(raw, true)
		if err == nil {
			t.Cleanup(func() { caddy.Stop() })
			return fmt.Sprintf("127.0.0.1:%d", port)
		}
		// The free port may be taken between its probe and Caddy's listen.
		if !strings.Contains(err.Error(), "address already in use") || attempt == 9 {
			t.Fatal(err)
		}
	}
}

// adaptCaddyfile adapts a Caddyfile with Caddy's own adapter, failing the
// test on errors.
func adaptCaddyfile(t *testing.T, caddyfile string) map[string]any {
	t.Helper()
	out, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), nil)
	if err != nil {
		t.Fatalf("adapting:\n%s\n%v", caddyfile, err)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	var cfg map[string]any
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatal(err)
	}
	return cfg
}

// routeHandlers lists the handlers of the adapted config's HTTP routes in
// the order they run, subroutes flattened.
func routeHandlers(t *testing.T, cfg map[string]any) []string {
	t.Helper()
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			if h, ok := v["handler"].(string); ok && h != "subroute" {
				out = append(out, h)
			}
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			sort.Strings(keys) // "handle" and "routes" never share a map
			for _, k := range keys {
				walk(v[k])
			}
		}
	}
	walk(cfg["apps"])
	if len(out) == 0 {
		t.Fatalf("no handlers in %v", cfg)
	}
	return out
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
