package balancer

import (
	"testing"
	"time"
)

func TestLiveHistoryAt(t *testing.T) {
	t.Parallel()
	full := func() *liveHistory {
		h := &liveHistory{start: 7}
		for i := range liveHistorySize + 10 {
			h.record(time.Duration(i+1)*time.Millisecond, int64(100+i))
		}
		return h
	}
	tests := []struct {
		name string
		h    *liveHistory
		t    time.Duration
		want int64
	}{
		{"no change recorded: the start", &liveHistory{start: 4}, time.Second, 4},
		{"before the first change: the start", &liveHistory{start: 4, changes: [liveHistorySize]liveChange{{at: 10, live: 5}}, n: 1}, 9, 4},
		{"at a change: its value", &liveHistory{start: 4, changes: [liveHistorySize]liveChange{{at: 10, live: 5}, {at: 20, live: 6}}, n: 2}, 10, 5},
		{"between changes: the earlier", &liveHistory{start: 4, changes: [liveHistorySize]liveChange{{at: 10, live: 5}, {at: 20, live: 6}}, n: 2}, 19, 5},
		{"after the last change: the last", &liveHistory{start: 4, changes: [liveHistorySize]liveChange{{at: 10, live: 5}, {at: 20, live: 6}}, n: 2}, 25, 6},
		{"wrapped ring, inside it", full(), 100 * time.Millisecond, 199},
		{"wrapped ring, older than it: the oldest kept", full(), 0, 110},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.h.at(tt.t, tt.h.start); got != tt.want {
				t.Errorf("at(%v) = %d, want %d", tt.t, got, tt.want)
			}
		})
	}
}

// A report whose count was taken before some of this process's connections
// opened counts those connections once, in the live part, even though they
// were already open when the report arrived.
func TestReportBaselineIsTakenAtTheSnapshot(t *testing.T) {
	t.Parallel()
	b := NewBackend("a:1")
	b.ObserveReport(Report{Connections: 0, Version: 1, TakenAt: time.Now()}, time.Now())
	b.addLive(1)
	snapshot := time.Now() // the backend counts 1 (this process's) + 10 (others')
	b.addLive(1)
	b.addLive(1)
	b.ObserveReport(Report{Connections: 11, Version: 2, TakenAt: snapshot}, time.Now())
	if l := b.Load(); l != 13 {
		t.Fatalf("load = %d, want 11 reported + 2 opened after the snapshot", l)
	}

	// The same report without its time: the two opened while it travelled
	// are in neither term.
	u := NewBackend("b:1")
	u.addLive(3)
	u.ObserveReport(Report{Connections: 11, Version: 2}, time.Now())
	if l := u.Load(); l != 11 {
		t.Fatalf("untimed load = %d, want 11", l)
	}

	// A snapshot time ahead of this clock is read as now.
	b.ObserveReport(Report{Connections: 20, Version: 3, TakenAt: time.Now().Add(time.Hour)}, time.Now())
	if l := b.Load(); l != 20 {
		t.Fatalf("load with a future snapshot = %d, want 20", l)
	}
}
