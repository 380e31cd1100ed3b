package caddymodule

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// drainResponse is the admin API's answer to a drain request.
type drainResponse struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Drained bool   `json:"drained"`
	Live    int64  `json:"live"`
}

// handleDrain serves
//
//	POST   /ws_balancer/backends/<id>/drain
//	DELETE /ws_balancer/backends/<id>/drain
//
// POST drains the backend whose ID (Consul service ID) or dial address is
// <id>: it gets no new connections or assignments, and handlers with
// drain_close_rate close its connections gradually. DELETE undoes it. The
// mark lives with the backend's shared state, so it outlasts config
// reloads for as long as some config or connection uses the backend.
func handleDrain(w http.ResponseWriter, r *http.Request) error {
	rest := strings.TrimPrefix(r.URL.EscapedPath(), "/ws_balancer/backends/")
	id, ok := strings.CutSuffix(rest, "/drain")
	if !ok || id == "" || strings.Contains(id, "/") {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("no such endpoint %s", r.URL.Path)}
	}
	id, err := url.PathUnescape(id)
	if err != nil {
		return caddy.APIError{HTTPStatus: http.StatusBadRequest, Err: fmt.Errorf("decoding backend id: %w", err)}
	}
	var on bool
	switch r.Method {
	case http.MethodPost, http.MethodPut:
		on = true
	case http.MethodDelete:
	default:
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("method %s not allowed", r.Method)}
	}
	u := findUpstream(id)
	if u == nil {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: errors.New("no backend with id or address " + id)}
	}
	if u.SetDrainedByOperator(on) {
		caddy.Log().Named("ws_balancer").Info("backend drain changed by admin API",
			zap.String("backend", u.Addr()), zap.String("id", u.ID), zap.Bool("drained", on))
	}
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(drainResponse{ID: u.ID, Address: u.Addr(), Drained: on, Live: u.Live()})
}

// findUpstream looks id up as an upstream ID or dial address in every
// provisioned handler.
func findUpstream(id string) *balancer.Upstream {
	var found *balancer.Upstream
	handlers.each(func(h *Handler) {
		if found != nil || h.source == nil {
			return
		}
		for _, u := range h.source.Upstreams() {
			if u.ID == id || u.Addr() == id {
				found = u
				return
			}
		}
	})
	return found
}
