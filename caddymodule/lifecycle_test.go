package caddymodule

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
)

// A configuration Validate refuses starts nothing: Provision returns the
// same error before any Consul watch (no request reaches Consul), and the
// handler never joins the set the admin API lists.
func TestProvisionRefusesBeforeStartingAnything(t *testing.T) {
	t.Parallel()
	front := consuldev.NewFront(t, consuldev.Shared(t).Addr())
	tests := []struct{ name, config, want string }{
		{"negative max_conns", `{"consul":{"service":"refused","address":"` + front.Addr() + `"},"max_conns":-1}`, "max_conns must not be negative"},
		{"unknown mode", `{"consul":{"service":"refused","address":"` + front.Addr() + `"},"mode":"teleport"}`, `unknown mode "teleport"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := new(Handler)
			if err := json.Unmarshal([]byte(tt.config), h); err != nil {
				t.Fatal(err)
			}
			err := h.Provision(testCaddyContext(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Provision = %v, want an error with %q", err, tt.want)
			}
			_ = h.Cleanup() // as Caddy does after a failed Provision
			found := false
			handlers.each(func(x *Handler) { found = found || x == h })
			if found {
				t.Error("a refused handler joined the handler set")
			}
		})
	}
	if n := front.Requests("/"); n != 0 {
		t.Errorf("%d requests reached Consul for refused configurations", n)
	}
}
