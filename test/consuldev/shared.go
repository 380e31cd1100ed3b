package consuldev

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
)

// SharedHCL is the shared agent's configuration: check output synced at
// once (check_update_interval "0s"), so tests that read counts from check
// output need not wait Consul's default 5 minutes. Tests of the default
// behaviour start an agent of their own.
const SharedHCL = `check_update_interval = "0s"`

var shared struct {
	mu    sync.Mutex
	dir   string
	agent *Agent
	err   error
	main  bool
}

// Main runs a package's tests and stops the shared agent afterwards. Use it
// from TestMain.
func Main(m *testing.M) int {
	shared.mu.Lock()
	shared.main = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.agent != nil {
		if err := shared.agent.stop(); err != nil {
			fmt.Fprintln(os.Stderr, "consuldev:", err)
			code = 1
		}
	}
	if shared.dir != "" {
		os.RemoveAll(shared.dir)
	}
	return code
}

// Shared returns the package's shared agent (ACLs off, SharedHCL), started
// on first use and stopped by Main. Tests sharing it must keep apart by
// service name and must not stop it.
func Shared(tb testing.TB) *Agent {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.main {
		tb.Fatal("consuldev.Shared needs TestMain to call consuldev.Main")
	}
	if shared.agent == nil && shared.err == nil {
		shared.dir, shared.err = os.MkdirTemp("", "consuldev-")
		if shared.err == nil {
			shared.agent, shared.err = start(context.Background(), spec{dir: shared.dir, name: nodeName("shared"), dev: true, hcl: SharedHCL})
		}
	}
	if shared.err != nil {
		tb.Fatalf("starting the shared consul agent: %v", shared.err)
	}
	return shared.agent
}
