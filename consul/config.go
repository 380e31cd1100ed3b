package consul

import (
	"errors"
	"fmt"
	"time"

	"github.com/hashicorp/consul/api"
)

// Consistency modes of a Consul read (api-docs "Consistency Modes").
const (
	// ConsistencyDefault reads from the leader, which may briefly serve a
	// stale value after losing leadership.
	ConsistencyDefault = ""
	// ConsistencyStale lets any server answer: usually within about 50ms of
	// the leader, and available without a leader. Best for many watchers.
	ConsistencyStale = "stale"
	// ConsistencyConsistent makes the leader confirm its leadership first:
	// an extra round trip per query.
	ConsistencyConsistent = "consistent"
)

// MaxWaitTime is the longest wait Consul honours in a blocking query.
const MaxWaitTime = 10 * time.Minute

// DefaultWaitTime is the wait of a blocking query when Config.WaitTime is 0:
// Consul's own default.
const DefaultWaitTime = 5 * time.Minute

// Config says which Consul to ask, how, and about which service. Empty fields
// keep what api.DefaultConfig reads from the environment (CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_SSL, CONSUL_CACERT,
// CONSUL_CAPATH, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME,
// CONSUL_HTTP_SSL_VERIFY, ...), and after that Consul's defaults
// (127.0.0.1:8500, http).
type Config struct {
	// Address is the agent's host:port, or a URL with scheme http, https or
	// unix.
	Address string
	// Scheme is http or https.
	Scheme string
	// Token is the ACL token; it needs service:read (and node:read) on the
	// watched service.
	Token string
	// Datacenter to query; empty means the agent's own.
	Datacenter string

	// Service is the name the backends register under. Required.
	Service string
	// Tag, if set, keeps only instances with this tag.
	Tag string

	// CAFile and CAPath verify the agent's certificate.
	CAFile, CAPath string
	// CertFile and KeyFile are a client certificate, for agents that verify
	// incoming connections.
	CertFile, KeyFile string
	// TLSServerName is the name expected in the agent's certificate, when it
	// differs from the host in Address.
	TLSServerName string
	// InsecureSkipVerify turns off the check of the agent's certificate. Only
	// for testing.
	InsecureSkipVerify bool

	// WaitTime bounds one blocking query; 0 means DefaultWaitTime. Consul
	// adds up to WaitTime/16 of jitter and caps it at MaxWaitTime.
	WaitTime time.Duration
	// Consistency is ConsistencyDefault, ConsistencyStale or
	// ConsistencyConsistent.
	Consistency string
}

// Validate checks the fields that can be checked without Consul.
func (c Config) Validate() error {
	var errs []error
	if c.Service == "" {
		errs = append(errs, errors.New("consul: service name is required"))
	}
	switch c.Scheme {
	case "", "http", "https":
	default:
		errs = append(errs, fmt.Errorf("consul: scheme %q is not http or https", c.Scheme))
	}
	switch c.Consistency {
	case ConsistencyDefault, ConsistencyStale, ConsistencyConsistent:
	default:
		errs = append(errs, fmt.Errorf("consul: consistency %q is not %q or %q", c.Consistency, ConsistencyStale, ConsistencyConsistent))
	}
	if c.WaitTime < 0 || c.WaitTime > MaxWaitTime {
		errs = append(errs, fmt.Errorf("consul: wait %s is not between 0 and %s", c.WaitTime, MaxWaitTime))
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		errs = append(errs, errors.New("consul: a client certificate needs both cert_file and key_file"))
	}
	return errors.Join(errs...)
}

// APIConfig returns the configuration for api.NewClient: api.DefaultConfig()
// (so the environment is honoured) with the non-empty fields of c on top.
func (c Config) APIConfig() *api.Config {
	ac := api.DefaultConfig()
	set := func(dst *string, v string) {
		if v != "" {
			*dst = v
		}
	}
	set(&ac.Address, c.Address)
	set(&ac.Scheme, c.Scheme)
	set(&ac.Token, c.Token)
	if c.Token != "" {
		// A token given here wins over CONSUL_HTTP_TOKEN_FILE too.
		ac.TokenFile = ""
	}
	set(&ac.Datacenter, c.Datacenter)
	set(&ac.TLSConfig.CAFile, c.CAFile)
	set(&ac.TLSConfig.CAPath, c.CAPath)
	set(&ac.TLSConfig.CertFile, c.CertFile)
	set(&ac.TLSConfig.KeyFile, c.KeyFile)
	set(&ac.TLSConfig.Address, c.TLSServerName)
	if c.InsecureSkipVerify {
		ac.TLSConfig.InsecureSkipVerify = true
	}
	return ac
}

// NewClient validates c and returns a Consul client for it.
func (c Config) NewClient() (*api.Client, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	client, err := api.NewClient(c.APIConfig())
	if err != nil {
		return nil, fmt.Errorf("consul: creating client: %w", err)
	}
	return client, nil
}

// waitTime is the effective wait of a blocking query.
func (c Config) waitTime() time.Duration {
	if c.WaitTime <= 0 {
		return DefaultWaitTime
	}
	return min(c.WaitTime, MaxWaitTime)
}

// queryOptions returns the options of a query from index.
func (c Config) queryOptions(index uint64) *api.QueryOptions {
	q := &api.QueryOptions{
		Datacenter: c.Datacenter,
		WaitIndex:  index,
		WaitTime:   c.waitTime(),
	}
	switch c.Consistency {
	case ConsistencyStale:
		q.AllowStale = true
	case ConsistencyConsistent:
		q.RequireConsistent = true
	}
	return q
}
