// Command caddy is Caddy with the standard modules and the WebSocket
// balancer: the same binary xcaddy.sh builds, buildable with plain `go build`
// (the tests and benchmarks use it).
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/wsbalancer/caddy-wsbalancer"
)

func main() {
	caddycmd.Main()
}
