#!/usr/bin/env bash
# The demo in one command: builds ./caddy with xcaddy, starts three echo
# backends and Caddy with demo/Caddyfile (static backends, no Consul), and
# prints what to look at. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")"

./xcaddy.sh
mkdir -p .demo
go build -o .demo/wsecho ./cmd/wsecho
go build -o .demo/wsload ./cmd/wsload

pids=()
cleanup() {
	kill "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

for i in 1 2 3; do
	.demo/wsecho -listen "127.0.0.1:910$i" -name "backend-$i" -hello >".demo/wsecho-$i.log" 2>&1 &
	pids+=($!)
done
DEMO_ROOT="$(pwd)/demo" ./caddy run --config demo/Caddyfile --adapter caddyfile >.demo/caddy.log 2>&1 &
pids+=($!)

for _ in $(seq 50); do
	curl -fsS -o /dev/null http://127.0.0.1:8080/ 2>/dev/null && break
	sleep 0.2
done
curl -fsS -o /dev/null http://127.0.0.1:8080/ || { echo "Caddy did not start; see .demo/caddy.log" >&2; exit 1; }

.demo/wsload -url ws://127.0.0.1:8080/ws -n 30 -hold 1s
cat <<'MSG'

ws_balancer demo is running (logs in .demo/):
  page:      http://127.0.0.1:8080/          opens WebSockets, shows where each landed
  socket:    ws://127.0.0.1:8080/ws          any WebSocket client, e.g.
             .demo/wsload -n 90 -hold 30s    (prints the spread, holds them)
  backends:  curl -s http://127.0.0.1:2019/ws_balancer/backends
  metrics:   curl -s http://127.0.0.1:2019/metrics | grep ws_balancer
Press Ctrl-C to stop.
MSG
wait
