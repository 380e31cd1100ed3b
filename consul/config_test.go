package consul

import (
	"strings"
	"testing"
	"time"
)

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // substring of the error; "" for none
	}{
		{"minimal", Config{Service: "echo"}, ""},
		{"full", Config{Service: "echo", Scheme: "https", Consistency: "stale", WaitTime: time.Minute, CertFile: "c", KeyFile: "k"}, ""},
		{"no service", Config{}, "service name is required"},
		{"bad scheme", Config{Service: "echo", Scheme: "ftp"}, `scheme "ftp"`},
		{"bad consistency", Config{Service: "echo", Consistency: "eventual"}, `consistency "eventual"`},
		{"wait too long", Config{Service: "echo", WaitTime: 11 * time.Minute}, "wait 11m0s"},
		{"negative wait", Config{Service: "echo", WaitTime: -time.Second}, "wait -1s"},
		{"cert without key", Config{Service: "echo", CertFile: "c"}, "both cert_file and key_file"},
	} {
		err := tc.cfg.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: unexpected error %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// Empty fields keep what the environment says; set fields win.
func TestConfigEnvironment(t *testing.T) {
	t.Setenv("CONSUL_HTTP_ADDR", "10.1.1.1:8500")
	t.Setenv("CONSUL_HTTP_TOKEN", "env-token")
	t.Setenv("CONSUL_HTTP_SSL", "true")
	t.Setenv("CONSUL_CACERT", "/env/ca.pem")

	ac := Config{Service: "echo"}.APIConfig()
	if ac.Address != "10.1.1.1:8500" || ac.Token != "env-token" || ac.Scheme != "https" || ac.TLSConfig.CAFile != "/env/ca.pem" {
		t.Errorf("environment not honoured: addr %q token %q scheme %q ca %q", ac.Address, ac.Token, ac.Scheme, ac.TLSConfig.CAFile)
	}
	ac = Config{Service: "echo", Address: "127.0.0.1:9500", Token: "mine", Scheme: "http", CAFile: "/mine.pem",
		Datacenter: "dc2", TLSServerName: "consul.internal", InsecureSkipVerify: true}.APIConfig()
	if ac.Address != "127.0.0.1:9500" || ac.Token != "mine" || ac.Scheme != "http" || ac.TLSConfig.CAFile != "/mine.pem" ||
		ac.Datacenter != "dc2" || ac.TLSConfig.Address != "consul.internal" || !ac.TLSConfig.InsecureSkipVerify {
		t.Errorf("fields do not override the environment: %+v", ac)
	}
}

func TestNewClient(t *testing.T) {
	t.Parallel()
	if _, err := (Config{Service: "echo", Address: "127.0.0.1:8500"}).NewClient(); err != nil {
		t.Errorf("NewClient: %v", err)
	}
	if _, err := (Config{}).NewClient(); err == nil {
		t.Error("NewClient accepted a config without service")
	}
}

func TestQueryOptions(t *testing.T) {
	t.Parallel()
	q := Config{Service: "echo", Datacenter: "dc2", Consistency: ConsistencyConsistent}.queryOptions(42)
	if q.WaitIndex != 42 || q.WaitTime != DefaultWaitTime || !q.RequireConsistent || q.AllowStale || q.Datacenter != "dc2" {
		t.Errorf("consistent: %+v", q)
	}
	q = Config{Service: "echo", Consistency: ConsistencyStale, WaitTime: time.Second}.queryOptions(0)
	if !q.AllowStale || q.RequireConsistent || q.WaitTime != time.Second {
		t.Errorf("stale: %+v", q)
	}
}
