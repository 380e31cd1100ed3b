package harness

import (
	"slices"
	"time"
)

// AssignBurstResult is the report test/assignburst prints: one JSON line.
type AssignBurstResult struct {
	Took       time.Duration  `json:"took"` // from the first assignment to the last answer
	AssignP50  time.Duration  `json:"assign_p50"`
	AssignP99  time.Duration  `json:"assign_p99"`
	ConnectP50 time.Duration  `json:"connect_p50"` // from an assignment's answer to its connection
	ConnectP99 time.Duration  `json:"connect_p99"`
	Failures   int64          `json:"failures"`
	FirstError string         `json:"first_error,omitempty"`
	ByBackend  map[string]int `json:"by_backend"` // assignments per backend ID
	Connected  int            `json:"connected"`
}

// Percentile returns the p-quantile (0 to 1) of ds, 0 for none.
func Percentile(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(float64(len(s))*p))]
}
