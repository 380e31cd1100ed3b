//go:build tools

// Package consulbin pins the Consul server for the test harness; build.sh
// builds it with `go build github.com/hashicorp/consul`.
package consulbin

import _ "github.com/hashicorp/consul"
