package balancer

import (
	"testing"
	"time"
)

// An upstream failing its active health checks is down: selection skips it
// before any upgrade is tried on it, and takes it again once it passes.
func TestActiveHealth(t *testing.T) {
	now := time.Now()
	var nilHealth *ActiveHealth
	if !nilHealth.Up() {
		t.Fatal("no active checks must mean healthy")
	}
	sick := &Upstream{Backend: NewBackend("a:1"), Active: new(ActiveHealth)}
	well := &Upstream{Backend: NewBackend("b:1")}
	well.reserve() // more loaded: chosen only when a is out
	ups := []*Upstream{sick, well}
	if got := LeastLoaded(ups, now, nil); got != sick {
		t.Fatalf("healthy and least loaded: picked %s", got.Addr())
	}
	if !sick.Active.Set(false) || sick.Active.Set(false) {
		t.Error("Set must report a change once")
	}
	if got := LeastLoaded(ups, now, nil); got != well {
		t.Errorf("a failing its checks: picked %s", got.Addr())
	}
	if sick.State(now) != "down" || sick.Healthy(now) || !sick.Backend.Healthy(now) {
		t.Errorf("state %s", sick.State(now))
	}
	if !sick.Active.Set(true) {
		t.Error("recovery not reported as a change")
	}
	if got := LeastLoaded(ups, now, nil); got != sick {
		t.Errorf("a recovered: picked %s", got.Addr())
	}
}
