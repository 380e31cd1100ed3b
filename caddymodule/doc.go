// Package caddymodule is the Caddy glue of the WebSocket balancer: the
// http.handlers.ws_balancer handler and its Caddyfile directive, the
// admin.api.ws_balancer admin routes, Prometheus metrics, and the
// caddy.UsagePool that keeps per-backend state across config reloads. The
// work itself is done by the Caddy-free packages internal/balancer (the
// core) and consul (discovery); the wire contract they speak is
// wsbackend/protocol.
package caddymodule
