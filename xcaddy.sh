#!/usr/bin/env bash
# Builds ./caddy: Caddy with the ws_balancer module from this checkout, using
# xcaddy (installed first if missing).
#
# The module is pinned at the zero pseudo-version and replaced by this
# directory: a module proxy that does not know our path answers 403/400
# rather than 404, which makes xcaddy's plain `--with path=.` fail.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION="${CADDY_VERSION:-v2.11.9}"
XCADDY_VERSION="${XCADDY_VERSION:-v0.4.5}"
MODULE="$(go list -m)"
OUTPUT="${OUTPUT:-./caddy}"

if ! command -v xcaddy >/dev/null 2>&1; then
	gobin="$(go env GOBIN)"
	[ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
	if [ ! -x "$gobin/xcaddy" ]; then
		echo "installing xcaddy $XCADDY_VERSION" >&2
		go install "github.com/caddyserver/xcaddy/cmd/xcaddy@$XCADDY_VERSION"
	fi
	export PATH="$gobin:$PATH"
fi

echo "building $OUTPUT: Caddy $CADDY_VERSION with $MODULE from $(pwd)" >&2
xcaddy build "$CADDY_VERSION" \
	--output "$OUTPUT" \
	--with "$MODULE@v0.0.0-00010101000000-000000000000=."
"$OUTPUT" list-modules | grep -E 'ws_balancer|ws_least_conn|upstreams\.consul' >&2 || {
	echo "error: $OUTPUT lacks the ws_balancer modules" >&2
	exit 1
}
