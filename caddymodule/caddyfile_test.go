package caddymodule

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name  string
		input string
		want  Handler
		err   string
	}{
		{
			name:  "inline backends",
			input: "ws_balancer 127.0.0.1:9101 ws://127.0.0.1:9102/chat",
			want:  Handler{Backends: []string{"127.0.0.1:9101", "ws://127.0.0.1:9102/chat"}},
		},
		{
			name: "all options",
			input: `ws_balancer {
				mode proxy
				backends 127.0.0.1:1 127.0.0.1:2
				backends 127.0.0.1:3
				max_conns 100
				fail_duration 30s
				max_attempts 2
				dial_timeout 1s
				handshake_timeout 2s
				retry_after 10s
				reject_non_websocket
				tls_insecure_skip_verify
			}`,
			want: Handler{
				Mode: "proxy", Backends: []string{"127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"},
				MaxConns: 100, FailDuration: caddy.Duration(30 * time.Second), MaxAttempts: 2,
				DialTimeout: caddy.Duration(time.Second), HandshakeTimeout: caddy.Duration(2 * time.Second),
				RetryAfter: caddy.Duration(10 * time.Second), RejectNonWebSocket: true,
				TLS: &reverseproxy.TLSConfig{InsecureSkipVerify: true},
			},
		},
		{name: "unknown option", input: "ws_balancer {\n colour blue\n}", err: `unrecognized subdirective "colour"`},
		{name: "missing value", input: "ws_balancer {\n max_conns\n}", err: "wrong argument count"},
		{name: "too many values", input: "ws_balancer {\n max_conns 1 2\n}", err: "wrong argument count"},
		{name: "negative", input: "ws_balancer {\n max_conns -1\n}", err: "not a non-negative integer"},
		{name: "bad duration", input: "ws_balancer {\n fail_duration soon\n}", err: "not a valid duration"},
		{name: "negative duration", input: "ws_balancer {\n dial_timeout -1s\n}", err: "not a valid duration"},
		{name: "flag with argument", input: "ws_balancer {\n reject_non_websocket yes\n}", err: "wrong argument count"},
		{name: "duplicate", input: "ws_balancer {\n retry_after 1s\n retry_after 2s\n}", err: "given twice"},
		{name: "bad mode", input: "ws_balancer {\n mode teleport\n}", err: `unknown mode "teleport"`},
		{name: "empty backends", input: "ws_balancer {\n backends\n}", err: "wrong argument count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, ok := parseHandler(t, tc.input, tc.err)
			if !ok {
				return
			}
			if strings.Join(h.Backends, ",") != strings.Join(tc.want.Backends, ",") {
				t.Errorf("backends %v, want %v", h.Backends, tc.want.Backends)
			}
			h.Backends, tc.want.Backends = nil, nil
			if h.Mode != tc.want.Mode || h.MaxConns != tc.want.MaxConns || h.FailDuration != tc.want.FailDuration ||
				h.MaxAttempts != tc.want.MaxAttempts || h.DialTimeout != tc.want.DialTimeout ||
				h.HandshakeTimeout != tc.want.HandshakeTimeout || h.RetryAfter != tc.want.RetryAfter ||
				h.RejectNonWebSocket != tc.want.RejectNonWebSocket || !reflect.DeepEqual(h.TLS, tc.want.TLS) {
				t.Errorf("got %+v, want %+v", h, tc.want)
			}
		})
	}
}

// FuzzUnmarshalCaddyfile: any input either parses into a handler that
// provisions and validates or is refused with an error; it never panics.
func FuzzUnmarshalCaddyfile(f *testing.F) {
	for _, seed := range []string{
		"ws_balancer 127.0.0.1:9101",
		"ws_balancer {\n backends 127.0.0.1:1 ws://h:2/p\n max_conns 5\n fail_duration 1s\n}",
		"ws_balancer {\n reject_non_websocket\n mode proxy\n}",
		"ws_balancer {\n backends wss://[::1]:443/x?y=1\n retry_after 1m\n}",
		"ws_balancer {\n consul {\n service ws\n }\n}",
		"ws_balancer wss://h:1 {\n header_up X-A {host}\n header_up -B\n header_down +C d\n tls_server_name x\n}",
		"ws_balancer wss://h:1 {\n tls_trusted_ca_certs /nonexistent.pem\n tls_client_auth a b\n}",
		"ws_balancer {\n dynamic a localhost 9101 {\n versions ipv4\n }\n health_uri /healthz\n health_interval 1s\n}",
		"ws_balancer 127.0.0.1:1 {\n health_port 2\n health_headers {\n Host x\n }\n health_status 5xx\n}",
		"ws_balancer 127.0.0.1:1 127.0.0.1:2 {\n weights 3 1\n affinity {query.room} {\n balance_factor 1.5\n cookie wsb\n cookie_secret 0123456789abcdef\n }\n}",
		"ws_balancer 127.0.0.1:1 {\n affinity {\n cookie wsb\n }\n rebalance {\n ratio 1.1\n }\n}",
		"ws_balancer 127.0.0.1:1 {\n affinity {http.request.header.X-Room} {\n balance_factor 1\n }\n}",
		"ws_balancer {\n}\n}",
		"ws_balancer \"{\"",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, input string) {
		var h Handler
		d := caddyfile.NewTestDispenser(input)
		if err := h.UnmarshalCaddyfile(d); err != nil {
			return
		}
		if h.Consul != nil {
			return // needs a Consul agent to provision
		}
		ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
		defer cancel()
		if err := h.Provision(ctx); err != nil {
			h.Cleanup()
			return
		}
		_ = h.Validate()
		h.Cleanup()
	})
}

// parseHandler parses a ws_balancer block. With wantErr set it checks that
// parsing fails with an error containing it and reports false; otherwise it
// fails the test on any error and returns the handler.
func parseHandler(t *testing.T, input, wantErr string) (Handler, bool) {
	t.Helper()
	var h Handler
	err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input))
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("error %v, want one containing %q", err, wantErr)
		}
		return h, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return h, true
}
