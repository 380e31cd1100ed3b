package caddymodule

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// HealthChecks configures the active health checks of a ws_balancer's
// backends. (The passive ones are fail_duration: a backend that fails a
// dial or a handshake rests.)
type HealthChecks struct {
	// Active probes every backend over HTTP on a timer, with the options
	// and meanings of reverse_proxy's active health checks (uri, port,
	// upstream, headers, method, body, follow_redirects, interval 30s,
	// timeout 5s, passes 1, fails 1, max_size, expect_status 2xx,
	// expect_body). A backend that fails gets no new connections, and so
	// no client's upgrade is tried on it, until it passes again; its
	// connections stay. Passes and fails count consecutive probes.
	//
	// The probe goes to http://host:port<uri>, or https:// with the
	// handler's upstream tls config for wss:// backends, on a new
	// connection each time; the uri is not joined to a backend's path
	// prefix. It applies to static backends and to polled dynamic ones
	// (a, srv, multi): Consul's backends keep Consul's health. Handlers
	// (and config generations) with the same settings share one checker
	// per backend, so a reload keeps the verdicts.
	Active *reverseproxy.ActiveHealthChecks `json:"active,omitempty"`
}

// healthChecks are a handler's provisioned active health checks: what its
// backends' checkers probe with.
type healthChecks struct {
	cfg        reverseproxy.ActiveHealthChecks // defaults filled in
	uri        *url.URL                        // nil: cfg.Path
	bodyRegexp *regexp.Regexp
	tlsConfig  *tls.Config // for wss:// backends
	// key identifies the settings (tls ones included) in healthCheckers.
	key    string
	logger *zap.Logger
}

// provisionHealthChecks checks the active health check options and fills
// in reverse_proxy's defaults. It returns nil when there are none.
func (h *Handler) provisionHealthChecks(ctx caddy.Context, tlsConfig *tls.Config) (*healthChecks, error) {
	if h.HealthChecks == nil || h.HealthChecks.Active == nil {
		return nil, nil
	}
	c := &healthChecks{cfg: *h.HealthChecks.Active, tlsConfig: tlsConfig, logger: ctx.Logger().Named("health_checker.active")}
	a := &c.cfg
	if !a.IsEnabled() {
		return nil, errors.New("active health checks need health_uri (uri) or health_port (port)")
	}
	for name, v := range map[string]int64{
		"health_interval": int64(a.Interval), "health_timeout": int64(a.Timeout), "health_passes": int64(a.Passes),
		"health_fails": int64(a.Fails), "health_port": int64(a.Port), "max_size": a.MaxSize,
	} {
		if v < 0 {
			return nil, fmt.Errorf("active health checks: %s must not be negative", name)
		}
	}
	if a.Port > 65535 {
		return nil, fmt.Errorf("active health checks: health_port %d is out of range", a.Port)
	}
	// reverse_proxy's defaults.
	if a.Method == "" {
		a.Method = http.MethodGet
	}
	if a.Interval == 0 {
		a.Interval = caddy.Duration(30 * time.Second)
	}
	if a.Timeout == 0 {
		a.Timeout = caddy.Duration(5 * time.Second)
	}
	a.Passes, a.Fails = max(a.Passes, 1), max(a.Fails, 1)
	cleaned := http.Header{} // canonical keys, as JSON may not have them
	for key, values := range a.Headers {
		for _, v := range values {
			cleaned.Add(key, v)
		}
	}
	a.Headers = cleaned
	if a.URI != "" {
		u, err := url.Parse(a.URI)
		if err != nil {
			return nil, fmt.Errorf("active health checks: parsing health_uri: %w", err)
		}
		c.uri = u
	} else if a.Path != "" {
		c.logger.Warn("the 'path' (health_path) option is deprecated, please use 'uri' (health_uri) instead")
	}
	if a.ExpectBody != "" {
		re, err := regexp.Compile(a.ExpectBody)
		if err != nil {
			return nil, fmt.Errorf("active health checks: compiling health_body: %w", err)
		}
		c.bodyRegexp = re
	}
	b, err := json.Marshal(struct {
		Active *reverseproxy.ActiveHealthChecks
		TLS    *reverseproxy.TLSConfig
	}{a, h.TLS})
	if err != nil {
		return nil, fmt.Errorf("encoding health check settings: %w", err)
	}
	sum := sha256.Sum256(b)
	c.key = hex.EncodeToString(sum[:])
	return c, nil
}

// healthCheckers holds one running checker per backend and settings,
// shared by the handlers that check that backend so, and across config
// reloads: a reload neither restarts the probes nor forgets a verdict. A
// checker stops when its last handler releases it (at Cleanup, or when
// its backend leaves a dynamic set).
var healthCheckers = caddy.NewUsagePool()

// healthChecker probes one backend. It must not be copied.
type healthChecker struct {
	health balancer.ActiveHealth
	key    string
	cancel context.CancelFunc
	done   chan struct{}
}

// acquire returns the checker of backend u, starting it if it is the
// first user.
func (c *healthChecks) acquire(u *url.URL) *healthChecker {
	key := c.key + " " + u.Scheme + "://" + u.Host
	v, _, _ := healthCheckers.LoadOrNew(key, func() (caddy.Destructor, error) {
		// Not the handler's context: the checker outlives this config
		// when the next one shares it. Destruct stops it.
		ctx, cancel := context.WithCancel(context.Background())
		hc := &healthChecker{key: key, cancel: cancel, done: make(chan struct{})}
		go hc.run(ctx, c, u)
		return hc, nil
	})
	return v.(*healthChecker)
}

func (hc *healthChecker) release() { _, _ = healthCheckers.Delete(hc.key) }

// Destruct stops the checker when its last user is gone.
func (hc *healthChecker) Destruct() error {
	hc.cancel()
	<-hc.done
	return nil
}

// run probes at once, then every interval, and sets the verdict after
// passes consecutive passes or fails consecutive failures.
func (hc *healthChecker) run(ctx context.Context, c *healthChecks, u *url.URL) {
	defer close(hc.done)
	client := c.client(u)
	defer client.CloseIdleConnections()
	logger := c.logger.With(zap.String("backend", u.Host))
	var passes, fails int
	check := func(time.Time) {
		err := c.probe(ctx, client, u)
		if ctx.Err() != nil {
			return // stopping: not a verdict
		}
		if err == nil {
			passes, fails = passes+1, 0
			if passes >= c.cfg.Passes && hc.health.Set(true) {
				logger.Info("backend passes its active health check again; it takes new connections")
			}
			return
		}
		passes, fails = 0, fails+1
		if fails >= c.cfg.Fails && hc.health.Set(false) {
			logger.Warn("backend failed its active health check; it gets no new connections", zap.Error(err))
		} else {
			logger.Debug("active health check failed", zap.Error(err))
		}
	}
	check(time.Now())
	everyTick(ctx, time.Duration(c.cfg.Interval), check)
}

// client is the HTTP client of backend u's probes: a new connection per
// probe (a probe also checks that the backend accepts connections), TLS
// with the handler's upstream config for wss:// backends.
func (c *healthChecks) client(u *url.URL) *http.Client {
	timeout := time.Duration(c.cfg.Timeout)
	transport := &http.Transport{
		DialContext:       (&net.Dialer{Timeout: timeout}).DialContext,
		DisableKeepAlives: true,
	}
	if u.Scheme == schemeWSS {
		transport.TLSClientConfig = c.tlsConfig
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			if !c.cfg.FollowRedirects {
				return http.ErrUseLastResponse
			}
			return nil
		},
	}
}

// probe sends one health check request to backend u and reports why it
// failed, as reverse_proxy's active health checks do: the request goes to
// the backend (or to health_upstream, or to health_port) with health_uri,
// health_method, health_request_body and health_headers (global
// placeholders, and {http.reverse_proxy.active.target_upstream}), and
// passes with the expected status and body.
func (c *healthChecks) probe(ctx context.Context, client *http.Client, u *url.URL) error {
	target := url.URL{Scheme: "http", Host: u.Host}
	if u.Scheme == schemeWSS {
		target.Scheme = "https"
	}
	switch {
	case c.cfg.Upstream != "":
		target.Host = c.cfg.Upstream
	case c.cfg.Port != 0:
		target.Host = net.JoinHostPort(u.Hostname(), strconv.Itoa(c.cfg.Port))
	}
	if c.uri != nil {
		target.Path, target.RawQuery = c.uri.Path, c.uri.RawQuery
	} else {
		target.Path = c.cfg.Path
	}
	repl := caddy.NewReplacer()
	repl.Set("http.reverse_proxy.active.target_upstream", u.Host)
	var body io.Reader
	if c.cfg.Body != "" {
		// Known placeholders only: a JSON body's braces are not ones.
		body = strings.NewReader(repl.ReplaceKnown(c.cfg.Body, ""))
	}
	req, err := http.NewRequestWithContext(ctx, c.cfg.Method, target.String(), body)
	if err != nil {
		return fmt.Errorf("making health check request: %w", err)
	}
	for key, values := range c.cfg.Headers {
		key = repl.ReplaceAll(key, "")
		if key == "Host" {
			req.Host = repl.ReplaceAll(c.cfg.Headers.Get(key), "")
			continue
		}
		for _, v := range values {
			req.Header.Add(key, repl.ReplaceKnown(v, ""))
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var rb io.Reader = resp.Body
	if c.cfg.MaxSize > 0 {
		rb = io.LimitReader(rb, c.cfg.MaxSize)
	}
	if want := c.cfg.ExpectStatus; want > 0 && !caddyhttp.StatusCodeMatches(resp.StatusCode, want) ||
		want == 0 && (resp.StatusCode < 200 || resp.StatusCode >= 300) {
		return fmt.Errorf("health check answered %d", resp.StatusCode)
	}
	if c.bodyRegexp != nil {
		b, err := io.ReadAll(rb)
		if err != nil {
			return fmt.Errorf("reading health check response: %w", err)
		}
		if !c.bodyRegexp.Match(b) {
			return errors.New("health check response body does not match health_body")
		}
	}
	return nil
}

// Interface guards
var _ caddy.Destructor = (*healthChecker)(nil)
