package balancer

import (
	"crypto/tls"
	"testing"
)

// A dial to a wss backend takes the configured TLS config as is when it
// names the server, else one copy per host, made once, that shares the
// configured session cache and leaves the configured config alone.
func TestTLSConfigs(t *testing.T) {
	var c tlsConfigs
	named := &tls.Config{ServerName: "backend.internal"}
	if got := c.get(named, "10.0.0.1"); got != named {
		t.Error("a config naming its server was copied")
	}
	cfg := &tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(0)}
	a1, a2, b := c.get(cfg, "a.internal"), c.get(cfg, "a.internal"), c.get(cfg, "b.internal")
	if a1 != a2 {
		t.Error("a second dial to the same host copied the config again")
	}
	if a1.ServerName != "a.internal" || b.ServerName != "b.internal" || cfg.ServerName != "" {
		t.Errorf("server names %q %q, configured %q", a1.ServerName, b.ServerName, cfg.ServerName)
	}
	if a1.ClientSessionCache != cfg.ClientSessionCache {
		t.Error("the copy has its own session cache")
	}
	if d := c.get(nil, "c.internal"); d.ServerName != "c.internal" || d.ClientSessionCache == nil {
		t.Errorf("default config: server name %q, session cache %v", d.ServerName, d.ClientSessionCache)
	}
}
