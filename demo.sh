#!/usr/bin/env bash
# The demo in one command. Ctrl-C stops everything.
#
#   ./demo.sh          static backends, one Caddy, no Consul (fast)
#   ./demo.sh consul   a real Consul dev agent (built once by
#                      test/consul/build.sh), three backends that register
#                      and report their counts, and two Caddy instances
#                      balancing by the global count
set -euo pipefail
cd "$(dirname "$0")"
mode="${1:-static}"
case "$mode" in static | consul) ;; *)
	echo "usage: $0 [consul]" >&2
	exit 2
	;;
esac

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

wait_http() { # url what
	for _ in $(seq 100); do
		curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
		sleep 0.2
	done
	echo "$2 did not start; see .demo/" >&2
	exit 1
}

if [ "$mode" = static ]; then
	for i in 1 2 3; do
		.demo/wsecho -listen "127.0.0.1:910$i" -name "backend-$i" -hello >".demo/wsecho-$i.log" 2>&1 &
		pids+=($!)
	done
	DEMO_ROOT="$(pwd)/demo" ./caddy run --config demo/Caddyfile --adapter caddyfile >.demo/caddy.log 2>&1 &
	pids+=($!)
	wait_http http://127.0.0.1:8080/ Caddy

	.demo/wsload -url ws://127.0.0.1:8080/ws -n 30 -hold 1s
	cat <<'MSG'

ws_balancer demo is running (logs in .demo/):
  page:      http://127.0.0.1:8080/          opens WebSockets, shows where each landed
  socket:    ws://127.0.0.1:8080/ws          any WebSocket client, e.g.
             .demo/wsload -n 90 -hold 30s    (prints the spread, holds them)
  backends:  curl -s http://127.0.0.1:2019/ws_balancer/backends
  metrics:   curl -s http://127.0.0.1:2019/metrics | grep ws_balancer
  with Consul: ./demo.sh consul
Press Ctrl-C to stop.
MSG
	wait
	exit 0
fi

# Consul mode.
consul=$(test/consul/build.sh | tail -n 1)
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -http-port 8500 -dns-port 8600 \
	-grpc-port -1 -hcl 'disable_update_check = true' -hcl 'ports { grpc_tls = -1 }' >.demo/consul.log 2>&1 &
pids+=($!)
wait_http http://127.0.0.1:8500/v1/status/leader "Consul"
export CONSUL_HTTP_ADDR=127.0.0.1:8500

backend() { # n
	.demo/wsecho -listen "127.0.0.1:910$1" -name "backend-$1" -hello -consul 127.0.0.1:8500 -drain-wait 1s \
		>".demo/wsecho-$1.log" 2>&1 &
	echo $! >".demo/wsecho-$1.pid"
	pids+=($!)
}
for i in 1 2 3; do backend "$i"; done
for port in 8080 8081; do
	DEMO_ROOT="$(pwd)/demo" DEMO_PORT=$port DEMO_ADMIN=$((2019 + port - 8080)) \
		./caddy run --config demo/Caddyfile.consul --adapter caddyfile >".demo/caddy-$port.log" 2>&1 &
	pids+=($!)
done
wait_http http://127.0.0.1:8080/ "Caddy on :8080"
wait_http http://127.0.0.1:8081/ "Caddy on :8081"
for _ in $(seq 50); do
	n=$(curl -fsS 'http://127.0.0.1:8500/v1/health/service/ws-echo?passing' | grep -o '"ServiceID"' | wc -l)
	[ "$n" -ge 3 ] && break
	sleep 0.2
done

spread() {
	for i in 1 2 3; do
		printf '  backend-%s  ' "$i"
		curl -fsS "http://127.0.0.1:910$i/stats" 2>/dev/null || echo "(gone)"
	done
}
echo
echo "60 connections, 30 through each Caddy instance, held for 3 s:"
.demo/wsload -url ws://127.0.0.1:8080/ws -n 30 -hold 3s >.demo/wsload-8080.txt &
l1=$!
.demo/wsload -url ws://127.0.0.1:8081/ws -n 30 -hold 3s >.demo/wsload-8081.txt &
l2=$!
sleep 1.5
echo "the global spread, as each backend counts it:"
spread
wait "$l1" "$l2"
cat .demo/wsload-8080.txt .demo/wsload-8081.txt

cat <<'MSG'

ws_balancer with Consul is running (logs in .demo/):
  Consul:    http://127.0.0.1:8500/ui/   and
             curl -s 'http://127.0.0.1:8500/v1/health/service/ws-echo?passing' | grep -o '"ws_connections":"[0-9]*"'
  Caddy:     ws://127.0.0.1:8080/ws and ws://127.0.0.1:8081/ws (admin :2019 and :2020)
             curl -s http://127.0.0.1:2019/ws_balancer/backends
  load:      .demo/wsload -url ws://127.0.0.1:8080/ws -n 90 -hold 60s &
             .demo/wsload -url ws://127.0.0.1:8081/ws -n 90 -hold 60s &
  a backend leaves (it deregisters, then closes its connections):
             kill $(cat .demo/wsecho-2.pid)
  a backend joins (no config edit, no reload):
             .demo/wsecho -listen 127.0.0.1:9104 -name backend-4 -hello -consul 127.0.0.1:8500 &
Press Ctrl-C to stop.
MSG
wait
