#!/usr/bin/env bash
# Builds the pinned Consul server once and prints the binary's path as its
# last line. Later calls reuse the cached binary (well under a second).
#
#   CONSUL_BIN=$(test/consul/build.sh | tail -n 1)
#
# Consul 1.14.11 is the newest release the Go module proxy serves whole; 1.15
# and later depend on modules that are not open source. `go install` refuses it
# because of its replace directives, so it is built from this tiny module of
# its own, which keeps Consul's dependencies out of the plugin's go.mod.
set -euo pipefail
version=1.14.11
here=$(cd "$(dirname "$0")" && pwd)
bin="${CONSUL_BIN_DIR:-$(go env GOPATH)/bin}/consul-$version"

cached() { [ -x "$bin" ] && "$bin" version 2>/dev/null | grep -q "Consul v$version"; }

if cached; then
	echo "$bin"
	exit 0
fi

mkdir -p "$(dirname "$bin")"
# Test packages run in parallel and may all ask at once: one builds, the
# others wait for it and reuse its binary.
exec 9>"$bin.lock"
flock 9
if ! cached; then
	echo "building Consul $version into $bin (about 2.5 minutes, once)" >&2
	cd "$here"
	tmp="$bin.tmp.$$"
	# go.sum is written on the first build, like any module download.
	GOFLAGS=-mod=mod go build -trimpath -o "$tmp" github.com/hashicorp/consul >&2
	mv -f "$tmp" "$bin"
fi
echo "$bin"
