package caddymodule

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/consul"
	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// ConsulConfig says where Consul is and which service the backends register
// under. Empty fields fall back to Consul's environment variables
// (CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_HTTP_SSL, CONSUL_CACERT, ...)
// and then to Consul's defaults (http://127.0.0.1:8500). String fields may
// use global placeholders, such as {env.CONSUL_HTTP_TOKEN}.
type ConsulConfig struct {
	// Address of the Consul agent: host:port, or a URL with scheme http,
	// https or unix. Default: $CONSUL_HTTP_ADDR, else 127.0.0.1:8500.
	Address string `json:"address,omitempty"`

	// Scheme used to talk to the agent: http or https. Default: https if
	// $CONSUL_HTTP_SSL is true, else http.
	Scheme string `json:"scheme,omitempty"`

	// ACL token. It needs service:read on the service and node:read on the
	// nodes it runs on. Default: $CONSUL_HTTP_TOKEN.
	Token string `json:"token,omitempty"`

	// Datacenter to query. Default: the agent's own.
	Datacenter string `json:"datacenter,omitempty"`

	// Service is the name the backends register under. Required.
	Service string `json:"service,omitempty"`

	// Tag, if set, keeps only the instances that carry it.
	Tag string `json:"tag,omitempty"`

	// CAFile is a PEM file of the CA certificates that verify the agent's
	// certificate. Default: $CONSUL_CACERT, else the system roots.
	CAFile string `json:"ca_file,omitempty"`

	// CAPath is a directory of CA certificates. Default: $CONSUL_CAPATH.
	CAPath string `json:"ca_path,omitempty"`

	// CertFile and KeyFile are a client certificate and its key, for agents
	// that verify clients (verify_incoming). Give both or neither.
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`

	// TLSServerName is the name expected in the agent's certificate when it
	// differs from the host in Address.
	TLSServerName string `json:"tls_server_name,omitempty"`

	// TLSInsecureSkipVerify turns off verification of the agent's
	// certificate. Only for testing: anyone on the path can then answer in
	// Consul's name and choose your backends.
	TLSInsecureSkipVerify bool `json:"tls_insecure_skip_verify,omitempty"`

	// Wait bounds each blocking query (Consul holds a query until something
	// changes or this passes, plus up to 1/16 of jitter). At most 10m.
	// Changes are seen at once whatever the value; a shorter wait only
	// detects a silently dead connection sooner. Default: 5m.
	Wait caddy.Duration `json:"wait,omitempty"`

	// Consistency of the reads: "" or "default" (Consul's default: the
	// leader answers), "stale" (any server answers, usually within 50ms of
	// the leader; best with many balancers) or "consistent".
	Consistency string `json:"consistency,omitempty"`
}

// resolve replaces global placeholders and converts to the consul
// package's configuration.
func (c ConsulConfig) resolve() consul.Config {
	repl := caddy.NewReplacer()
	r := func(s string) string { return repl.ReplaceKnown(s, "") }
	consistency := c.Consistency
	if consistency == "default" {
		consistency = consul.ConsistencyDefault
	}
	return consul.Config{
		Address:            r(c.Address),
		Scheme:             r(c.Scheme),
		Token:              r(c.Token),
		Datacenter:         r(c.Datacenter),
		Service:            r(c.Service),
		Tag:                r(c.Tag),
		CAFile:             r(c.CAFile),
		CAPath:             r(c.CAPath),
		CertFile:           r(c.CertFile),
		KeyFile:            r(c.KeyFile),
		TLSServerName:      r(c.TLSServerName),
		InsecureSkipVerify: c.TLSInsecureSkipVerify,
		WaitTime:           time.Duration(c.Wait),
		Consistency:        consistency,
	}
}

// unmarshalBlock is the one parser of the consul options, for the consul
// block of ws_balancer and for reverse_proxy's (and ws_balancer's)
// `dynamic consul`. The dispenser is on the token that names the block
// ("consul"), at any nesting. The syntax is in README.md, "With Consul".
func (c *ConsulConfig) unmarshalBlock(d *caddyfile.Dispenser) error {
	seen := make(map[string]bool)
	switch args := d.RemainingArgs(); len(args) {
	case 0:
	case 1:
		c.Service = args[0]
		seen["service"] = true
	default:
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return d.Errf("consul: option %q given twice", opt)
		}
		seen[opt] = true
		var err error
		switch opt {
		case "service":
			c.Service, err = oneArg(d)
		case "tag":
			c.Tag, err = oneArg(d)
		case "address":
			c.Address, err = oneArg(d)
		case "scheme":
			if c.Scheme, err = oneArg(d); err == nil && c.Scheme != "http" && c.Scheme != "https" {
				err = d.Errf("consul: scheme %q is not http or https", c.Scheme)
			}
		case "token":
			c.Token, err = oneArg(d)
		case "datacenter":
			c.Datacenter, err = oneArg(d)
		case "ca_file":
			c.CAFile, err = oneArg(d)
		case "ca_path":
			c.CAPath, err = oneArg(d)
		case "cert_file":
			c.CertFile, err = oneArg(d)
		case "key_file":
			c.KeyFile, err = oneArg(d)
		case "tls_server_name":
			c.TLSServerName, err = oneArg(d)
		case "tls_insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.TLSInsecureSkipVerify = true
		case "wait":
			err = durationArg(d, &c.Wait)
			if err == nil && time.Duration(c.Wait) > consul.MaxWaitTime {
				err = d.Errf("consul: wait %s is longer than Consul's maximum of %s", time.Duration(c.Wait), consul.MaxWaitTime)
			}
		case "consistency":
			var mode string
			if mode, err = oneArg(d); err == nil {
				switch mode {
				case "default":
					c.Consistency = consul.ConsistencyDefault
				case consul.ConsistencyStale, consul.ConsistencyConsistent:
					c.Consistency = mode
				default:
					err = d.Errf("consul: consistency %q is not default, stale or consistent", mode)
				}
			}
		default:
			return d.Errf("unrecognized consul option %q", opt)
		}
		if err != nil {
			return err
		}
	}
	if c.Service == "" {
		return d.Err("consul: service is required")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		return d.Err("consul: cert_file and key_file go together")
	}
	return nil
}

// oneArg reads exactly one argument of the current option.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	if !d.NextArg() {
		return "", d.ArgErr()
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.ArgErr()
	}
	return v, nil
}

// ConsulSource is one running view of a Consul service: the passing
// instances, dialled at the service's address and port (the node's address
// if the service has none), with the load each one publishes in its service
// meta. Start and Stop are the only code that starts and stops Consul
// discovery: the consul block of ws_balancer (whose JSON this is: the
// short form of dynamic_backends with source consul) and ConsulUpstreams
// both use them.
//
// If Consul refuses the token, Start fails. If Consul cannot be reached,
// Start succeeds with no backends and picks them up as soon as Consul
// answers; if Consul goes away later, the last known backends are kept.
type ConsulSource struct {
	ConsulConfig

	// scheme of the upstreams' URLs: ws (default) or wss.
	scheme  string
	watcher *sharedWatcher
	source  *consul.Source
}

// Start begins watching Consul and returns the source of upstreams it keeps
// up to date, over Backends from store, each capped at maxConns (0: no cap
// beyond what a backend reports). The watch is shared with every other view
// (handler, config generation, reverse_proxy) of the same service with the
// same settings, and lasts until the last of them calls Stop.
func (c *ConsulSource) Start(ctx caddy.Context, store balancer.BackendStore, maxConns int64) (balancer.UpstreamSource, error) {
	logger := ctx.Logger().Named("consul")
	w, err := acquireWatcher(c.resolve(), logger)
	if err != nil {
		return nil, err
	}
	c.watcher = w
	c.source = consul.NewSource(w.Watcher, registeringStore{store}, &consul.SourceOptions{
		MaxConns:      maxConns,
		BackendScheme: c.scheme,
		Logger:        logger,
	})
	return c.source, nil
}

// Stop ends this view's use of the watch and releases the backends it
// holds. Connections already relayed are not affected. It is safe to call
// more than once, and without Start.
func (c *ConsulSource) Stop() {
	if c.source != nil {
		c.source.Close()
		c.source = nil
	}
	if c.watcher != nil {
		c.watcher.release()
		c.watcher = nil
	}
}

// UnmarshalCaddyfile parses the consul block inside ws_balancer; the
// dispenser is on the "consul" token.
func (c *ConsulSource) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return c.unmarshalBlock(d)
}

// consulWatchers holds one running watcher per distinct Consul
// configuration, shared by every handler and upstream source that uses it
// and across config reloads: a reload does not restart the watch, and the
// watch stops when the last user is cleaned up.
var consulWatchers = caddy.NewUsagePool()

// sharedWatcher is a watcher in consulWatchers.
type sharedWatcher struct {
	*consul.Watcher
	key string
}

// Destruct stops the watcher when its last user is gone.
func (w *sharedWatcher) Destruct() error {
	w.Stop()
	return nil
}

func (w *sharedWatcher) release() { _, _ = consulWatchers.Delete(w.key) }

// acquireWatcher returns the running watcher of cfg, starting it if this is
// its first user. The newest user's logger is the one it logs to.
func acquireWatcher(cfg consul.Config, logger *zap.Logger) (*sharedWatcher, error) {
	key, err := watcherKey(cfg)
	if err != nil {
		return nil, err
	}
	v, loaded, err := consulWatchers.LoadOrNew(key, func() (caddy.Destructor, error) {
		client, err := cfg.NewClient()
		if err != nil {
			return nil, err
		}
		w := consul.NewWatcher(client, cfg, &consul.WatchOptions{Logger: logger})
		// Not the provisioning context: the watch outlives this config when
		// the next one shares it. Destruct stops it.
		if err := w.Start(context.Background()); err != nil {
			return nil, err
		}
		return &sharedWatcher{Watcher: w, key: key}, nil
	})
	if err != nil {
		return nil, err
	}
	w := v.(*sharedWatcher)
	if loaded {
		w.SetLogger(logger)
	}
	return w, nil
}

// watcherKey identifies a configuration in consulWatchers. It is a hash, so
// that the token does not sit in the pool's keys.
func watcherKey(cfg consul.Config) (string, error) {
	b, err := json.Marshal(cfg)
	if err != nil {
		return "", fmt.Errorf("consul: encoding configuration: %w", err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// consulBackends indexes, by dial address, the backends that Consul
// sources hold, so that the ws_least_conn selection policy finds their load
// reports. Entries are reference counted alongside the BackendStore.
var consulBackends = backendIndex{m: make(map[string]*indexedBackend)}

type backendIndex struct {
	mu sync.RWMutex
	m  map[string]*indexedBackend
}

// indexedBackend is a backend with the state ws_least_conn keeps per load
// report. It must not be copied.
type indexedBackend struct {
	*balancer.Backend
	refs int // guarded by backendIndex.mu

	mu sync.Mutex
	// reportAt identifies the load report the baseline belongs to.
	reportAt time.Time
	// baseline is reverse_proxy's request count to the backend when the
	// report was first seen.
	baseline int64
}

func (x *backendIndex) add(b *balancer.Backend) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e := x.m[b.Addr()]
	if e == nil {
		e = &indexedBackend{Backend: b}
		x.m[b.Addr()] = e
	}
	e.refs++
}

func (x *backendIndex) remove(addr string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if e := x.m[addr]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(x.m, addr)
		}
	}
}

func (x *backendIndex) lookup(addr string) *indexedBackend {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.m[addr]
}

// registeringStore is a BackendStore that also indexes what it hands out
// in consulBackends.
type registeringStore struct{ balancer.BackendStore }

func (s registeringStore) Acquire(addr string) *balancer.Backend {
	b := s.BackendStore.Acquire(addr)
	consulBackends.add(b)
	return b
}

func (s registeringStore) Release(addr string) {
	consulBackends.remove(addr)
	s.BackendStore.Release(addr)
}

// Interface guards
var (
	_ caddyfile.Unmarshaler = (*ConsulSource)(nil)
	_ caddy.Destructor      = (*sharedWatcher)(nil)
	_ balancer.BackendStore = registeringStore{}
)
