package affinity

import "testing"

func TestTrafficShare(t *testing.T) {
	for _, tc := range []struct {
		name          string
		reported, own int64
		want          float64
	}{
		{"one of ten even balancers", 10000, 1000, 10},
		{"the only balancer", 1000, 1000, 1},
		{"holds more than reported: reports lag", 900, 1000, 1},
		{"just started", 10000, 19, 1},
		{"enough to trust", 10000, 20, MaxTrafficShare},
		{"capped", 100000, 1000, MaxTrafficShare},
		{"nothing reported", 0, 500, 1},
	} {
		if got := TrafficShare(tc.reported, tc.own); got != tc.want {
			t.Errorf("%s: TrafficShare(%d, %d) = %v, want %v", tc.name, tc.reported, tc.own, got, tc.want)
		}
	}
}

func TestScaledLoad(t *testing.T) {
	for _, tc := range []struct {
		name                       string
		reported, own, ownAtReport int64
		share                      float64
		want                       int64
	}{
		{"no change since the report", 200, 20, 20, 10, 200},
		{"own opens stand for everyone's", 200, 23, 20, 10, 230},
		{"own closes too", 200, 17, 20, 10, 170},
		{"unscaled", 200, 23, 20, 1, 203},
		{"never below 0", 10, 0, 5, 10, 0},
		{"rounded", 100, 21, 20, 2.5, 103},
	} {
		if got := ScaledLoad(tc.reported, tc.own, tc.ownAtReport, tc.share); got != tc.want {
			t.Errorf("%s: ScaledLoad = %d, want %d", tc.name, got, tc.want)
		}
	}
}
