package balancer

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// defaultTLSConfig is what wss backends get without ProxyOptions.TLSConfig:
// the system's roots, and a session cache (every client connection is a new
// backend connection; resumption spares most of them a full handshake).
var defaultTLSConfig = &tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(0)}

// tlsConfigs hands out the TLS config for each backend host name: the
// configured one when it names its server, else a copy with ServerName set
// to the host, made once per host rather than per dial (a config is large,
// and the copies share its session cache, so resumption works across
// connections).
type tlsConfigs struct {
	byHost sync.Map // host name -> *tls.Config
	n      atomic.Int32
}

// maxTLSHosts bounds the cached copies: discovered backends come and go,
// and past this many hosts a dial clones rather than grow the cache.
const maxTLSHosts = 4096

func (c *tlsConfigs) get(cfg *tls.Config, host string) *tls.Config {
	if cfg == nil {
		cfg = defaultTLSConfig
	}
	if cfg.ServerName != "" {
		return cfg
	}
	if v, ok := c.byHost.Load(host); ok {
		return v.(*tls.Config)
	}
	hc := cfg.Clone()
	hc.ServerName = host
	if c.n.Add(1) <= maxTLSHosts {
		if v, loaded := c.byHost.LoadOrStore(host, hc); loaded {
			return v.(*tls.Config)
		}
	}
	return hc
}

// tlsHandshake makes conn a TLS client of backend u.
func (p *Proxy) tlsHandshake(ctx context.Context, conn net.Conn, u *Upstream) (net.Conn, error) {
	tc := tls.Client(conn, p.tlsConfigs.get(p.opts.TLSConfig, u.URL.Hostname()))
	if err := tc.HandshakeContext(ctx); err != nil {
		return conn, fmt.Errorf("TLS handshake with backend %s: %w", u.Addr(), err)
	}
	return tc, nil
}
