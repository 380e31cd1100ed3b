package caddymodule

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
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
	// Bound is the backend's affinity bound, with affinity on: the load
	// at which a key's new connections spill past it. 0 when it takes
	// none (down, draining, full).
	Bound *int64 `json:"bound,omitempty"`
	balancer.Stats
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
	list, total := listBackends(time.Now())
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(backendsResponse{Backends: list, TotalLive: total})
}

// listBackends is the one listing of the backends, for the admin API and
// the status page: every backend of every provisioned handler once, by ID,
// with its state and counts, then those no longer configured that still
// carry connections ("removed"); and the live connections over all.
func listBackends(now time.Time) ([]backendStatus, int64) {
	list := []backendStatus{}
	seen := make(map[string]bool)
	handlers.each(func(h *Handler) {
		if h.source == nil {
			return // not provisioned (yet)
		}
		ups := h.source.Upstreams()
		var bounds []int64
		if h.Affinity != nil {
			bounds = balancer.AffinityBounds(ups, now, h.Affinity.BalanceFactor)
		}
		for i, u := range ups {
			if seen[u.Addr()] {
				continue
			}
			seen[u.Addr()] = true
			st := u.Stats(now)
			st.Healthy = u.Healthy(now) // active health checks included
			bs := backendStatus{ID: u.ID, URL: u.URL.String(), State: u.State(now), MaxConns: u.Limit(), Stats: st}
			if bounds != nil {
				bs.Bound = &bounds[i]
			}
			list = append(list, bs)
		}
	})
	var total int64
	backendStates.Range(func(_, value any) bool {
		st := value.(backendEntry).Stats(now)
		total += st.Live
		if !seen[st.Addr] && st.Live > 0 {
			list = append(list, backendStatus{ID: st.Addr, State: "removed", Stats: st})
		}
		return true
	})
	sort.Slice(list, func(i, j int) bool { return list[i].ID < list[j].ID })
	return list, total
}

// Interface guards
var _ caddy.AdminRouter = adminAPI{}
