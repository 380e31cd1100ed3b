package balancer

import (
	"testing"
	"time"
)

func TestDrainedMark(t *testing.T) {
	b := NewBackend("10.0.0.1:80")
	u := &Upstream{Backend: b, ID: "a"}
	now := time.Now()
	if !u.Available(now) || u.Draining() || u.State(now) != "up" {
		t.Fatal("fresh upstream not available")
	}
	if !b.SetDrainedByOperator(true) || b.SetDrainedByOperator(true) {
		t.Fatal("SetDrained does not report changes")
	}
	if u.Available(now) || !u.Draining() || u.State(now) != "draining" {
		t.Fatal("drained upstream still available")
	}
	// The mark is on the shared Backend: a new Upstream over it (a reload,
	// a discovery change) sees it.
	u2 := &Upstream{Backend: b, ID: "a"}
	if u2.Available(now) {
		t.Fatal("mark lost on a new Upstream")
	}
	if LeastLoaded([]*Upstream{u2}, now, nil) != nil {
		t.Fatal("LeastLoaded chose a drained upstream")
	}
	b.SetDrainedByOperator(false)
	if !u2.Available(now) {
		t.Fatal("undrained upstream not available")
	}
	if (&Upstream{Backend: b, DrainAnnounced: true}).Available(now) {
		t.Fatal("a drain announced through discovery ignored")
	}
}

func TestRelayHook(t *testing.T) {
	ended := 0
	h := NewRelayHook(func() { ended++ })
	if h.Adopted() {
		t.Fatal("hook adopted early")
	}
	h.adopt()
	h.end()
	h.end()
	if !h.Adopted() || ended != 1 {
		t.Fatalf("adopted %v, ended %d times", h.Adopted(), ended)
	}
	var none *RelayHook
	none.adopt()
	none.end()
	if none.Adopted() {
		t.Fatal("nil hook misbehaves")
	}
}
