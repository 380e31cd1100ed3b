package caddymodule

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const (
	metricsNamespace = "caddy"
	metricsSubsystem = "ws_balancer"
)

// upgrades counts upgrade outcomes; it is incremented as they happen.
var upgrades = prometheus.NewCounterVec(prometheus.CounterOpts{
	Namespace: metricsNamespace,
	Subsystem: metricsSubsystem,
	Name:      "upgrades_total",
	Help:      "WebSocket upgrade attempts by backend and outcome.",
}, []string{"backend", "outcome"})

func countUpgrade(backend, outcome string) { upgrades.WithLabelValues(backend, outcome).Inc() }

// backendCollector reads the per-backend counters at scrape time, so the
// relay's hot path only does the atomic adds it does anyway.
type backendCollector struct{}

var (
	descLive = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "connections"),
		"Live WebSocket connections this instance relays, by backend.", []string{"backend"}, nil)
	descLoad = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "backend_load"),
		"Connections the balancer believes the backend holds (reported count plus own since the report).", []string{"backend"}, nil)
	descConnsTotal = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "connections_total"),
		"WebSocket connections relayed since start, by backend.", []string{"backend"}, nil)
	descBytes = prometheus.NewDesc(prometheus.BuildFQName(metricsNamespace, metricsSubsystem, "bytes_total"),
		"Bytes relayed, by backend and direction (up: client to backend).", []string{"backend", "direction"}, nil)
)

func (backendCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descLive
	ch <- descLoad
	ch <- descConnsTotal
	ch <- descBytes
}

func (backendCollector) Collect(ch chan<- prometheus.Metric) {
	now := time.Now()
	backendStates.Range(func(key, value any) bool {
		s := value.(backendEntry).Stats(now)
		ch <- prometheus.MustNewConstMetric(descLive, prometheus.GaugeValue, float64(s.Live), s.Addr)
		ch <- prometheus.MustNewConstMetric(descLoad, prometheus.GaugeValue, float64(s.Load), s.Addr)
		ch <- prometheus.MustNewConstMetric(descConnsTotal, prometheus.CounterValue, float64(s.ConnsTotal), s.Addr)
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.BytesUp), s.Addr, "up")
		ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(s.BytesDown), s.Addr, "down")
		return true
	})
}

// registerMetrics adds every collector of the module (upgrades, assignments,
// backend state, balancer closes, admission rejections, affinity choices)
// to the config's registry. Every handler of a config calls it; the second
// registration of the same collector is expected and ignored.
func registerMetrics(reg *prometheus.Registry) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{upgrades, assignments, backendCollector{}, drainCloses, rejections, affinityChoices} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}
