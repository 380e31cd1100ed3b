package caddymodule

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(StatusHandler{})
	httpcaddyfile.RegisterHandlerDirective("ws_balancer_status", parseStatusCaddyfile)
	// A status page answers its own path, as respond does, so it goes
	// with the responders, ahead of them all: a site's catch-all respond,
	// reverse_proxy or file_server must not shadow it. After error, so
	// that error and abort still guard it; and so ahead of ws_balancer
	// (placed before respond), whose reject_non_websocket would otherwise
	// answer 400 on the page's path when their matchers overlap. Placed
	// after a standard directive, not before ws_balancer itself: a plugin
	// may only name Caddy's own.
	httpcaddyfile.RegisterDirectiveOrder("ws_balancer_status", httpcaddyfile.After, "error")
}

// StatusHandler serves a status page of the balancer: every backend of
// every ws_balancer handler with its state and live counts, and a chart of
// how connections spread over the backends lately, updated live. The page
// is self-contained (no external assets); with ?format=json the same data
// comes as JSON. It shows backend addresses and load: put it behind the
// site's authentication.
type StatusHandler struct {
	// Interval is how often the counts are sampled for the chart and the
	// page refreshes. Default 2s.
	Interval caddy.Duration `json:"interval,omitempty"`
	// History is the span the chart covers. Default 10m.
	History caddy.Duration `json:"history,omitempty"`

	hist *statusHistory
}

// CaddyModule returns the Caddy module information.
func (StatusHandler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.ws_balancer_status",
		New: func() caddy.Module { return new(StatusHandler) },
	}
}

// Provision sets defaults and joins (or starts) the shared sampler, whose
// history survives config reloads.
func (s *StatusHandler) Provision(ctx caddy.Context) error {
	if s.Interval == 0 {
		s.Interval = caddy.Duration(2 * time.Second) // smooth enough, cheap enough
	}
	if s.History == 0 {
		s.History = caddy.Duration(10 * time.Minute)
	}
	key := fmt.Sprintf("%d/%d", s.Interval, s.History)
	v, _, err := statusHistories.LoadOrNew(key, func() (caddy.Destructor, error) {
		return newStatusHistory(time.Duration(s.Interval), time.Duration(s.History)), nil
	})
	if err != nil {
		return err
	}
	s.hist = v.(*statusHistory)
	return nil
}

// Validate checks the configuration.
func (s *StatusHandler) Validate() error {
	if s.Interval < caddy.Duration(100*time.Millisecond) {
		return fmt.Errorf("interval must be at least 100ms, got %s", time.Duration(s.Interval))
	}
	if s.History < s.Interval {
		return fmt.Errorf("history (%s) must not be shorter than interval", time.Duration(s.History))
	}
	return nil
}

// Cleanup releases the shared sampler.
func (s *StatusHandler) Cleanup() error {
	if s.hist != nil {
		_, _ = statusHistories.Delete(fmt.Sprintf("%d/%d", s.Interval, s.History))
	}
	return nil
}

// ServeHTTP serves the page, or its data with ?format=json.
func (s *StatusHandler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return caddyhttp.Error(http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed", r.Method))
	}
	data := s.hist.snapshot(time.Now())
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Query().Get("format") == "json" {
		w.Header().Set("Content-Type", "application/json")
		return json.NewEncoder(w).Encode(data)
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'")
	return statusPage.Execute(w, data)
}

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Parse(statusHTML))

// statusData is the page's data, and the JSON answer.
type statusData struct {
	Now       int64              `json:"now"` // unix milliseconds
	Interval  int64              `json:"interval_ms"`
	Backends  []backendStatus    `json:"backends"`
	TotalLive int64              `json:"total_live"`
	Times     []int64            `json:"times"`  // unix milliseconds of the samples
	Series    map[string][]int64 `json:"series"` // live count per backend per sample; -1 where absent
}

// statusHistories holds the samplers by interval and span, so that the
// chart's history survives config reloads.
var statusHistories = caddy.NewUsagePool()

// statusHistory samples the live count of every backend at a fixed
// interval into a ring.
type statusHistory struct {
	interval time.Duration
	cancel   context.CancelFunc
	done     chan struct{}

	mu      sync.Mutex
	size    int
	times   []int64
	samples []map[string]int64
}

func newStatusHistory(interval, span time.Duration) *statusHistory {
	ctx, cancel := context.WithCancel(context.Background())
	h := &statusHistory{interval: interval, cancel: cancel, done: make(chan struct{}), size: int(span / interval)}
	h.sample(time.Now())
	go h.run(ctx)
	return h
}

func (h *statusHistory) run(ctx context.Context) {
	defer close(h.done)
	everyTick(ctx, h.interval, h.sample)
}

func (h *statusHistory) sample(now time.Time) {
	list, _ := listBackends(now)
	m := make(map[string]int64, len(list))
	for _, b := range list {
		m[b.Addr] = b.Live
	}
	h.mu.Lock()
	h.times = append(h.times, now.UnixMilli())
	h.samples = append(h.samples, m)
	if n := len(h.times) - h.size; n > 0 {
		h.times = append(h.times[:0:0], h.times[n:]...)
		h.samples = append(h.samples[:0:0], h.samples[n:]...)
	}
	h.mu.Unlock()
}

func (h *statusHistory) snapshot(now time.Time) statusData {
	list, total := listBackends(now)
	d := statusData{Now: now.UnixMilli(), Interval: h.interval.Milliseconds(), Backends: list, TotalLive: total, Series: map[string][]int64{}}
	h.mu.Lock()
	defer h.mu.Unlock()
	d.Times = append([]int64{}, h.times...)
	for i, m := range h.samples {
		for addr := range m {
			if d.Series[addr] == nil {
				s := make([]int64, len(h.samples))
				for j := range s {
					s[j] = -1
				}
				d.Series[addr] = s
			}
		}
		for addr, s := range d.Series {
			if v, ok := m[addr]; ok {
				s[i] = v
			}
		}
	}
	return d
}

// Destruct stops the sampler.
func (h *statusHistory) Destruct() error {
	h.cancel()
	<-h.done
	return nil
}

func parseStatusCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	s := new(StatusHandler)
	err := s.UnmarshalCaddyfile(h.Dispenser)
	return s, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
// `ws_balancer_status [<matcher>] { ... }` with the options of README.md,
// "Operations".
func (s *StatusHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := make(map[string]bool)
	for d.NextBlock(0) {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("option %q given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "interval":
			if err := durationArg(d, &s.Interval); err != nil {
				return err
			}
		case "history":
			if err := durationArg(d, &s.History); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized subdirective %q", opt)
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*StatusHandler)(nil)
	_ caddy.Validator             = (*StatusHandler)(nil)
	_ caddy.CleanerUpper          = (*StatusHandler)(nil)
	_ caddyhttp.MiddlewareHandler = (*StatusHandler)(nil)
	_ caddyfile.Unmarshaler       = (*StatusHandler)(nil)
	_ caddy.Destructor            = (*statusHistory)(nil)
)
