// Package wsbalancer is the import path xcaddy builds in: it registers the
// WebSocket balancer's Caddy modules (see package caddymodule), so that
//
//	xcaddy build --with github.com/wsbalancer/caddy-wsbalancer
//
// yields a Caddy with ws_balancer.
package wsbalancer

import (
	// Register the Caddy modules.
	_ "github.com/wsbalancer/caddy-wsbalancer/caddymodule"
)
