package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

func init() {
	caddy.RegisterModule(adminAPI{})
}

// adminAPI serves the balancer's state on Caddy's admin endpoint:
//
//	GET /ws_balancer/backends
//	POST|DELETE /ws_balancer/backends/<id>/drain
//
// lists every backend of every ws_balancer handler with its state and
// counts; drains a backend or undoes it (see handleDrain).
type adminAPI struct{}

// CaddyModule returns the Caddy module information.
func (adminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.ws_balancer",
		New: func() caddy.Module { return new(adminAPI) },
	}
}

// Routes returns the admin routes.
func (a adminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{
		Pattern: "/ws_balancer/backends",
		Handler: caddy.AdminHandlerFunc(a.handleBackends),
	}, {
		Pattern: "/ws_balancer/backends/",
		Handler: caddy.AdminHandlerFunc(handleDrain),
	}}
}

// backendStatus is one backend in the admin API's answer.
type backendStatus struct {
	ID       string `json:"id"`
	URL      string `json:"url"`
	State    string `json:"state"`
	MaxConns int64  `json:"max_conns,omitempty"`
	wsbackend.Stats
}

type backendsResponse struct {
	Backends []backendStatus `json:"backends"`
	// TotalLive is the sum of live connections over all backends this
	// instance relays to, including backends no longer configured that
	// still carry connections.
	TotalLive int64 `json:"total_live"`
}

func (adminAPI) handleBackends(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	now := time.Now()
	resp := backendsResponse{Backends: []backendStatus{}}
	seen := make(map[string]bool)
	handlers.each(func(h *Handler) {
		for _, u := range h.source.Upstreams() {
			if seen[u.Addr()] {
				continue
			}
			seen[u.Addr()] = true
			resp.Backends = append(resp.Backends, backendStatus{
				ID: u.ID, URL: u.URL.String(), State: u.State(now), MaxConns: u.Limit(), Stats: u.Stats(now),
			})
		}
	})
	backendStates.Range(func(key, value any) bool {
		s := value.(backendEntry).Stats(now)
		resp.TotalLive += s.Live
		if !seen[s.Addr] && s.Live > 0 {
			resp.Backends = append(resp.Backends, backendStatus{ID: s.Addr, State: "removed", Stats: s})
		}
		return true
	})
	sort.Slice(resp.Backends, func(i, j int) bool { return resp.Backends[i].ID < resp.Backends[j].ID })
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(resp)
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
