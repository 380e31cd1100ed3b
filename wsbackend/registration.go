package wsbackend

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/internal/retry"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// Registration defaults; see RegistrationOptions.
const (
	DefaultTTL                     = 10 * time.Second
	DefaultReportInterval          = 3 * time.Second
	DefaultDeregisterCriticalAfter = time.Minute // Consul's minimum
)

// RegistrationOptions configure Register. Zero values mean the defaults.
type RegistrationOptions struct {
	// Client talks to the local Consul agent. Nil means
	// api.NewClient(api.DefaultConfig()), which honours CONSUL_HTTP_ADDR,
	// CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT and the rest.
	Client *api.Client

	// Service is the service name, shared by every backend of the pool
	// (the name balancers watch). Required.
	Service string
	// ID identifies this backend among the service's instances and must be
	// unique on its Consul agent. Default: Service-host-Port, host being
	// Address or else the machine's host name.
	ID string
	// Address and Port are what balancers in proxy mode dial. An empty
	// Address means the Consul node's address. Port is required.
	Address string
	Port    int
	// PublicURL is where balancers in assign mode send clients (meta
	// ws_url), ws:// or wss:// with a path. Empty means ws://Address:Port/.
	PublicURL string
	// Capacity is how many connections the backend accepts (meta
	// ws_capacity); 0 means unlimited. At capacity the TTL check reports
	// "warning", which takes the instance out of ?passing answers.
	Capacity int64
	// Tags and Meta are passed through to Consul; Meta must not use the
	// ws_* keys this package sets (see protocol.MetaConnections and the rest).
	Tags []string
	Meta map[string]string

	// TTL is the TTL of the service's check: if the backend stops
	// heartbeating for this long, its check turns critical. Default 10s.
	TTL time.Duration
	// ReportInterval is how often the backend heartbeats the TTL check.
	// Default 3s (a third of TTL when TTL is shorter than 9s); it must be
	// shorter than TTL.
	ReportInterval time.Duration
	// DeregisterCriticalAfter is how long the check may stay critical
	// before Consul removes the service, which cleans up after a backend
	// that died without deregistering. Default 1m; Consul raises shorter
	// values to 1m.
	DeregisterCriticalAfter time.Duration

	// Counter is the backend's live connection count, published as meta
	// ws_connections. Nil publishes no count: balancers then count only the
	// connections they made themselves.
	Counter *Counter
	// MinPublishInterval, Threshold, MinStep and RefreshAfter govern when a
	// changed count is published, as in ReporterOptions: defaults 2s, 10%,
	// 5 connections and 30s.
	MinPublishInterval time.Duration
	Threshold          float64
	MinStep            int64
	RefreshAfter       time.Duration

	// Logger receives failures (once per failure episode) and recoveries;
	// nil discards them.
	Logger *zap.Logger
}

// Registration is a backend registered in Consul with a TTL check, whose
// connection count it keeps published. Create it with Register; end it with
// Deregister.
type Registration struct {
	client   *api.Client
	opts     RegistrationOptions
	id       string
	checkID  string
	logger   *zap.Logger
	reporter *Reporter
	timeout  time.Duration // per Consul call

	// beat asks the heartbeat loop to check at once whether the check's
	// status must change (after a publish crossed Capacity).
	beat chan struct{}

	mu       sync.Mutex // guards draining, closing, deregistered
	draining bool
	// closing is set by Deregister once the loops have stopped: no
	// registration may follow.
	closing      bool
	deregistered bool

	cancel   context.CancelFunc
	done     chan struct{} // closed when both loops have returned
	deregMu  sync.Mutex    // serializes Deregister
	stopOnce sync.Once
}

// Register registers a backend instance of a service with the local Consul
// agent and keeps it registered until ctx ends or Deregister is called:
//
//   - The service carries Address and Port, and meta ws_connections (the
//     Counter's count), ws_capacity, ws_url and, once drained, ws_draining.
//   - Its TTL check starts passing and is heartbeated every ReportInterval
//     with Agent().UpdateTTL: status passing, or warning at capacity, and
//     output "connections=N capacity=C" for people reading Consul's UI.
//     Balancers must not read the count from the output: Consul syncs
//     output-only changes to its servers only every check_update_interval
//     (5 minutes by default, consul#9113).
//   - A Reporter re-registers the service with the new ws_connections when
//     the count moved by more than Threshold (and MinStep), reached or left
//     0, or crossed Capacity, at most once per MinPublishInterval, and any
//     other change within RefreshAfter.
//
// If the agent forgets the service (it restarted without its data, or
// reaped the service after a long outage), the next heartbeat registers it
// again, as does any earlier count report or Drain. Failures are logged
// once per episode and retried with backoff.
//
// ctx bounds the whole registration, not just this call: when it ends the
// loops stop without deregistering (the check then expires after TTL and
// Consul removes the service after DeregisterCriticalAfter). For a graceful
// exit call Deregister before closing connections.
// callTimeout is the least time a call to the Consul agent is given.
const callTimeout = 5 * time.Second

func Register(ctx context.Context, opts RegistrationOptions) (*Registration, error) {
	r, err := newRegistration(opts)
	if err != nil {
		return nil, err
	}
	if err := r.reporter.publish(ctx); err != nil {
		if isDenied(err) {
			// Consul names neither a missing token (it reports the
			// anonymous token's accessor ID) nor what was needed.
			return nil, fmt.Errorf("registering service %q as %q with Consul: %w; the Consul token must exist and grant service:write on %q",
				r.opts.Service, r.id, err, r.opts.Service)
		}
		return nil, fmt.Errorf("registering service %q as %q with Consul: %w", r.opts.Service, r.id, err)
	}
	r.logger.Info("registered with Consul",
		zap.String("address", hostPort(r.opts.Address, r.opts.Port)),
		zap.Duration("ttl", r.opts.TTL))

	loopCtx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	var wg sync.WaitGroup
	wg.Go(func() { r.heartbeatLoop(loopCtx) })
	wg.Go(func() { r.reporter.Run(loopCtx) })
	go func() {
		wg.Wait()
		close(r.done)
	}()
	return r, nil
}

func newRegistration(opts RegistrationOptions) (*Registration, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, err
	}
	opts.Tags, opts.Meta = slices.Clone(opts.Tags), maps.Clone(opts.Meta) // the caller may reuse them
	r := &Registration{
		client:  opts.Client,
		opts:    opts,
		id:      opts.ID,
		checkID: "service:" + opts.ID,
		// A busy agent takes seconds over a registration (it syncs
		// changes to the servers under one lock; 1-3 s measured at
		// 500 backends on one agent), so a call gets at least 5 s.
		timeout: max(opts.ReportInterval, callTimeout),
		beat:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	if r.client == nil {
		c, err := api.NewClient(api.DefaultConfig())
		if err != nil {
			return nil, fmt.Errorf("creating Consul client: %w", err)
		}
		r.client = c
	}
	logger := opts.Logger
	if logger == nil {
		logger = zap.NewNop()
	}
	r.logger = logger.Named("registration").With(zap.String("service", opts.Service), zap.String("id", r.id))
	rep, err := newReporter(opts.Counter, ReporterOptions{
		Publish:            r.register,
		Capacity:           opts.Capacity,
		Threshold:          opts.Threshold,
		MinStep:            opts.MinStep,
		MinPublishInterval: opts.MinPublishInterval,
		RefreshAfter:       opts.RefreshAfter,
		Logger:             r.logger,
	})
	if err != nil {
		return nil, fmt.Errorf("registration: %w", err)
	}
	rep.onPublished = r.afterPublish
	r.reporter = rep
	return r, nil
}

func (o *RegistrationOptions) setDefaults() error {
	if o.Service == "" {
		return errors.New("registration: Service is required")
	}
	if o.Port <= 0 || o.Port > 65535 {
		return fmt.Errorf("registration: Port %d out of range", o.Port)
	}
	if o.Capacity < 0 || o.TTL < 0 || o.ReportInterval < 0 || o.DeregisterCriticalAfter < 0 {
		return errors.New("registration: negative option")
	}
	if o.PublicURL != "" {
		u, err := url.Parse(o.PublicURL)
		if err != nil || (u.Scheme != "ws" && u.Scheme != "wss") || u.Host == "" {
			return fmt.Errorf("registration: PublicURL %q is not a ws:// or wss:// URL", o.PublicURL)
		}
	}
	for k := range o.Meta {
		switch k {
		case protocol.MetaConnections, protocol.MetaCapacity, protocol.MetaURL, protocol.MetaDraining:
			return fmt.Errorf("registration: Meta key %q is set by the registration itself", k)
		}
	}
	if len(o.Meta) > 60 {
		return errors.New("registration: too many Meta pairs (Consul allows 64, this package uses 4)")
	}
	if o.ID == "" {
		host := o.Address
		if host == "" {
			host, _ = os.Hostname()
		}
		o.ID = fmt.Sprintf("%s-%s-%d", o.Service, host, o.Port)
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.ReportInterval == 0 {
		o.ReportInterval = min(DefaultReportInterval, o.TTL/3)
	}
	if o.ReportInterval >= o.TTL {
		return fmt.Errorf("registration: ReportInterval %v must be shorter than TTL %v", o.ReportInterval, o.TTL)
	}
	if o.DeregisterCriticalAfter == 0 {
		o.DeregisterCriticalAfter = DefaultDeregisterCriticalAfter
	}
	return nil
}

// ID is the service ID the backend is registered under.
func (r *Registration) ID() string { return r.id }

// CheckID is the ID of the service's TTL check ("service:" + ID).
func (r *Registration) CheckID() string { return r.checkID }

// Published returns the connection count last written to Consul and when;
// ok is false when no count is published (no Counter).
func (r *Registration) Published() (connections int64, at time.Time, ok bool) {
	n, at, ok := r.reporter.Published()
	if n < 0 {
		return 0, at, false
	}
	return n, at, ok
}

// registration builds the service definition with connections (-1: none).
func (r *Registration) registration(connections int64) *api.AgentServiceRegistration {
	r.mu.Lock()
	draining := r.draining
	r.mu.Unlock()

	meta := make(map[string]string, len(r.opts.Meta)+4)
	for k, v := range r.opts.Meta {
		meta[k] = v
	}
	if connections >= 0 {
		meta[protocol.MetaConnections] = strconv.FormatInt(connections, 10)
		// The Reporter read the count just before calling register.
		meta[protocol.MetaCountedAt] = strconv.FormatInt(time.Now().UnixMilli(), 10)
	}
	if r.opts.Capacity > 0 {
		meta[protocol.MetaCapacity] = strconv.FormatInt(r.opts.Capacity, 10)
	}
	if r.opts.PublicURL != "" {
		meta[protocol.MetaURL] = r.opts.PublicURL
	}
	if draining {
		meta[protocol.MetaDraining] = "true"
	}
	return &api.AgentServiceRegistration{
		ID:      r.id,
		Name:    r.opts.Service,
		Tags:    r.opts.Tags,
		Address: r.opts.Address,
		Port:    r.opts.Port,
		Meta:    meta,
		Check: &api.AgentServiceCheck{
			CheckID: r.checkID,
			Name:    "WebSocket backend heartbeat",
			Notes:   "TTL heartbeat; the load report balancers read is the service meta " + protocol.MetaConnections,
			TTL:     r.opts.TTL.String(),
			// The status a heartbeat would give this count: passing from the
			// start, so that the instance is usable at once, unless it is
			// full. The agent keeps the status of a check it already has, so
			// this matters when it forgot the service: a full backend
			// registered again must not pass until the next heartbeat.
			Status:                         r.statusFor(connections),
			DeregisterCriticalServiceAfter: r.opts.DeregisterCriticalAfter.String(),
		},
	}
}

// statusFor is the check status for a published count (-1: none).
func (r *Registration) statusFor(connections int64) string {
	if r.opts.Capacity > 0 && connections >= r.opts.Capacity {
		return api.HealthWarning
	}
	return api.HealthPassing
}

// register is the Reporter's Publish: it (re-)registers the service with
// the count.
func (r *Registration) register(ctx context.Context, connections int64) error {
	r.mu.Lock()
	closing := r.closing
	r.mu.Unlock()
	if closing {
		return errDeregistered
	}
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.client.Agent().ServiceRegisterOpts(r.registration(connections), api.ServiceRegisterOpts{}.WithContext(ctx))
}

// afterPublish is the Reporter's hook after each publish: the check's
// status may have to follow the count across Capacity.
func (r *Registration) afterPublish(int64) {
	select {
	case r.beat <- struct{}{}:
	default:
	}
}

var errDeregistered = errors.New("registration: deregistered")

// checkState is what the heartbeat reports: the published count (not the
// live one, so that the output changes no more often than the meta does).
func (r *Registration) checkState() (status, output string) {
	n, _, ok := r.reporter.Published()
	capacity := r.opts.Capacity
	status = api.HealthPassing
	if ok && n >= 0 {
		output = fmt.Sprintf("connections=%d capacity=%d", n, capacity)
		status = r.statusFor(n)
	} else {
		output = fmt.Sprintf("capacity=%d", capacity)
	}
	r.mu.Lock()
	if r.draining {
		output += " draining"
	}
	r.mu.Unlock()
	return status, output
}

func (r *Registration) heartbeat(ctx context.Context, status, output string) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.client.Agent().UpdateTTLOpts(r.checkID, output, status, (&api.QueryOptions{}).WithContext(ctx))
}

// heartbeatLoop updates the TTL check every ReportInterval, and at once when
// a publish changed the check's status.
func (r *Registration) heartbeatLoop(ctx context.Context) {
	fails := newOutage(r.logger, "updating the TTL check "+r.checkID)
	bo := retry.Backoff{Base: 250 * time.Millisecond, Max: r.opts.ReportInterval}
	timer := time.NewTimer(r.opts.ReportInterval)
	defer timer.Stop()
	lastStatus := api.HealthPassing
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-r.beat:
			if status, _ := r.checkState(); status == lastStatus {
				continue
			}
		}
		status, output := r.checkState()
		err := r.heartbeat(ctx, status, output)
		if err != nil && agentForgot(err) && ctx.Err() == nil {
			// The agent forgot us: register again, then heartbeat.
			if fails.Failures() == 0 {
				r.logger.Info("the Consul agent lost the registration; registering again", zap.Error(err))
			}
			if err = r.reporter.PublishNow(ctx); err == nil {
				status, output = r.checkState()
				err = r.heartbeat(ctx, status, output)
			}
		}
		if ctx.Err() != nil {
			return
		}
		wait := r.opts.ReportInterval
		if err != nil {
			fails.Fail(err)
			wait = bo.Next()
		} else {
			fails.OK()
			bo.Reset()
			lastStatus = status
		}
		timer.Reset(wait)
	}
}

// agentForgot reports whether a call about this backend's check or service
// failed because the agent does not know it (it restarted without its data,
// or reaped the service after a long outage), so that registering again
// heals it. Consul 1.14.11 answers a TTL update of a forgotten check 404
// `Unknown check ID "…"` (seen on the real agent), a call about a forgotten
// service 404 `Unknown service ID "…"` or `No service registered with ID
// "…"`. The other wordings matched ("does not have associated TTL", a 500
// for a check without a TTL timer, and "service not found") cover answers
// that are not 404s. Any 404 counts: registering again is harmless if it
// was not that.
func agentForgot(err error) bool {
	var se api.StatusError
	if !errors.As(err, &se) {
		return false
	}
	if se.Code == http.StatusNotFound {
		return true
	}
	body := strings.ToLower(se.Body)
	for _, s := range []string{"unknown check", "does not have associated ttl", "unknown service", "service not found", "no service registered"} {
		if strings.Contains(body, s) {
			return true
		}
	}
	return false
}

// isPermanent reports whether retrying err cannot help: a request Consul
// refuses (400, 401, 403).
func isPermanent(err error) bool {
	var se api.StatusError
	return isDenied(err) || errors.As(err, &se) && se.Code == http.StatusBadRequest
}

// isDenied reports whether Consul refused the token (401, 403).
func isDenied(err error) bool {
	var se api.StatusError
	return errors.As(err, &se) && (se.Code == http.StatusUnauthorized || se.Code == http.StatusForbidden)
}

// Drain marks the backend draining (meta ws_draining=true, re-registered at
// once): balancers send it no new connections or assignments but leave the
// ones it has. Heartbeats and count reports go on. If the write fails, Drain
// returns the error and the registration keeps retrying in the background.
func (r *Registration) Drain(ctx context.Context) error { return r.setDraining(ctx, true) }

// Undrain ends draining.
func (r *Registration) Undrain(ctx context.Context) error { return r.setDraining(ctx, false) }

func (r *Registration) setDraining(ctx context.Context, on bool) error {
	r.mu.Lock()
	if r.closing {
		r.mu.Unlock()
		return errDeregistered
	}
	r.draining = on
	r.mu.Unlock()
	if err := r.reporter.PublishNow(ctx); err != nil {
		return fmt.Errorf("setting %s=%t on service %q: %w", protocol.MetaDraining, on, r.id, err)
	}
	return nil
}

// Deregister stops heartbeats and reports for good and removes the service
// from Consul, retrying with backoff until it succeeds, Consul refuses for
// good (ACLs) or ctx ends, so give ctx a deadline. A graceful shutdown calls
// it first, waits a moment for balancers to notice, then closes
// connections. Calling it again retries a failed deregistration and returns
// nil after a successful one.
func (r *Registration) Deregister(ctx context.Context) error {
	r.deregMu.Lock()
	defer r.deregMu.Unlock()
	r.mu.Lock()
	gone := r.deregistered
	r.mu.Unlock()
	if gone {
		return nil
	}
	r.stop()
	r.mu.Lock()
	r.closing = true // from now on, Drain and Undrain fail
	r.mu.Unlock()
	// Wait out a Drain in flight: its registration must not land after
	// the deregistration.
	r.reporter.pubMu.Lock()
	defer r.reporter.pubMu.Unlock()

	fails := newOutage(r.logger, "deregistering the service")
	bo := retry.Backoff{Base: 250 * time.Millisecond, Max: 5 * time.Second}
	for {
		err := r.deregister(ctx)
		var se api.StatusError
		if err == nil || (errors.As(err, &se) && se.Code == http.StatusNotFound) {
			fails.OK()
			r.mu.Lock()
			r.deregistered = true
			r.mu.Unlock()
			r.logger.Info("deregistered from Consul")
			return nil
		}
		if isPermanent(err) || ctx.Err() != nil {
			return fmt.Errorf("deregistering service %q from Consul: %w", r.id, err)
		}
		fails.Fail(err)
		t := time.NewTimer(bo.Next())
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("deregistering service %q from Consul: %w", r.id, err)
		case <-t.C:
		}
	}
}

// Close is Deregister.
func (r *Registration) Close(ctx context.Context) error { return r.Deregister(ctx) }

func (r *Registration) deregister(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	return r.client.Agent().ServiceDeregisterOpts(r.id, (&api.QueryOptions{}).WithContext(ctx))
}

// stop ends the loops and waits for them, so that no heartbeat or
// re-registration can bring the service back after it is deregistered.
func (r *Registration) stop() {
	r.stopOnce.Do(func() {
		if r.cancel != nil {
			r.cancel()
			<-r.done
		}
	})
}

func hostPort(host string, port int) string {
	if host == "" {
		host = "<node address>"
	}
	return host + ":" + strconv.Itoa(port)
}
