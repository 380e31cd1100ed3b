package consultest

import (
	"net/http"
	"testing"

	"github.com/hashicorp/consul/api"
)

// StartTest starts an agent on a free loopback port for a test, closes it
// when the test ends (failing the test if that leaks), and returns it with a
// client for it that carries opts.ACLToken.
func StartTest(tb testing.TB, opts Options) (*Agent, *api.Client) {
	tb.Helper()
	a := New(opts)
	if err := a.Start("127.0.0.1:0"); err != nil {
		tb.Fatalf("starting the Consul test agent: %v", err)
	}
	tb.Cleanup(func() {
		if err := a.Close(); err != nil {
			tb.Errorf("closing the Consul test agent: %v", err)
		}
	})
	return a, NewTestClient(tb, a.Addr(), opts.ACLToken)
}

// NewTestClient returns a consul/api client for addr with a transport of its
// own, closed with the test, so that tests do not share connections.
func NewTestClient(tb testing.TB, addr, token string) *api.Client {
	tb.Helper()
	transport := &http.Transport{}
	tb.Cleanup(transport.CloseIdleConnections)
	c, err := api.NewClient(&api.Config{Address: addr, Scheme: "http", Token: token, Transport: transport})
	if err != nil {
		tb.Fatalf("creating a consul client: %v", err)
	}
	return c
}
