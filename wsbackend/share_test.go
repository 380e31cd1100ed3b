package wsbackend

import (
	"testing"
	"time"
)

// The estimator's scale is the reported growth over this process's own
// assignments in the same intervals, within [1, shareMaxScale], and is
// applied to what every backend still holds.
func TestShareEstimator(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		own       int   // assignments to the first backend between its reports
		growth    int64 // the first backend's reported growth meanwhile
		wantScale float64
	}{
		{"alone: the report shows only our own", 100, 100, 1},
		{"two balancers", 100, 200, 2},
		{"four balancers", 100, 400, 4},
		{"churn: closes outweigh opens", 100, -50, 1},
		{"too few of our own to tell", 10, 80, 1},
		{"capped", 30, 3000, shareMaxScale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock()
			ups := staticUpstreams(t, clk, "10.0.0.1:1", "10.0.0.2:1")
			for _, u := range ups {
				u.ObserveReport(Report{Connections: 1000, Capacity: 0, Version: 1}, clk.Now())
			}
			var e shareEstimator
			e.observe(ups) // the reports intervals are measured from
			clk.Advance(time.Second)
			for range tt.own {
				ups[0].assigned.add(5*time.Second, time.Hour)
				ups[1].assigned.add(5*time.Second, time.Hour)
			}
			clk.Advance(time.Second)
			ups[0].ObserveReport(Report{Connections: 1000 + tt.growth, Capacity: 0, Version: 2}, clk.Now())
			e.observe(ups)
			if e.scale != tt.wantScale {
				t.Fatalf("scale %v, want %v", e.scale, tt.wantScale)
			}
			// The second backend has not reported: everything it holds
			// stands for the scale's worth of assignments.
			want := 1000 + int64(float64(tt.own)*tt.wantScale+0.999)
			if got := ups[1].Load(); got != want {
				t.Errorf("second backend's load %d, want %d", got, want)
			}
		})
	}
}
