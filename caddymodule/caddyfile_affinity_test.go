package caddymodule

import (
	"math"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// provisionHandler parses input and provisions and validates the handler
// as Caddy does when it loads a config. It returns the handler and the
// first error, with the stage that gave it ("parse" or "provision").
func provisionHandler(t *testing.T, input string) (*Handler, string, error) {
	t.Helper()
	h := new(Handler)
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		return h, "parse", err
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: t.Context()})
	t.Cleanup(cancel)
	t.Cleanup(func() { h.Cleanup() })
	if err := h.Provision(ctx); err != nil {
		return h, "provision", err
	}
	if err := h.Validate(); err != nil {
		return h, "provision", err
	}
	return h, "", nil
}

// Bad affinity and weights options are refused with an error that names
// the offending value (never a secret), at parse time where the parser
// alone can tell, else when the handler is provisioned.
func TestUnmarshalCaddyfileAffinityRefused(t *testing.T) {
	const backs = "ws_balancer 127.0.0.1:1 127.0.0.1:2 127.0.0.1:3 {\n"
	for _, tc := range []struct {
		name  string
		input string // the block's body after backs
		stage string
		err   string
	}{
		{"balance_factor 1", "affinity {query.room} {\n balance_factor 1\n}", "parse", `balance_factor: "1" is not a number above 1`},
		{"balance_factor below 1", "affinity {query.room} {\n balance_factor 0.9\n}", "parse", `balance_factor: "0.9" is not a number above 1`},
		{"balance_factor negative", "affinity {query.room} {\n balance_factor -2\n}", "parse", `balance_factor: "-2" is not a number above 1`},
		{"balance_factor not a number", "affinity {query.room} {\n balance_factor high\n}", "parse", `balance_factor: "high" is not a number above 1`},
		{"balance_factor NaN", "affinity {query.room} {\n balance_factor NaN\n}", "parse", `balance_factor: "NaN" is not a number above 1`},
		{"balance_factor infinite", "affinity {query.room} {\n balance_factor +Inf\n}", "parse", `balance_factor: "+Inf" is not a number above 1`},
		{"balance_factor with a percent", "affinity {query.room} {\n balance_factor 125%\n}", "parse", `balance_factor: "125%" is not a number above 1`},
		{"balance_factor missing", "affinity {query.room} {\n balance_factor\n}", "parse", "wrong argument count or unexpected line ending after 'balance_factor'"},
		{"balance_factor twice on a line", "affinity {query.room} {\n balance_factor 1.5 2\n}", "parse", "wrong argument count or unexpected line ending after '2'"},
		{"balance_factor given twice", "affinity {query.room} {\n balance_factor 1.5\n balance_factor 2\n}", "parse", `affinity option "balance_factor" given twice`},
		{"unknown subdirective", "affinity {query.room} {\n colour blue\n}", "parse", `unrecognized affinity option "colour"`},
		{"misspelt subdirective", "affinity {query.room} {\n balancefactor 1.5\n}", "parse", `unrecognized affinity option "balancefactor"`},
		{"cookie without name", "affinity {query.room} {\n cookie\n}", "parse", "wrong argument count or unexpected line ending after 'cookie'"},
		{"cookie with two names", "affinity {query.room} {\n cookie a b\n}", "parse", "wrong argument count or unexpected line ending after 'b'"},
		{"cookie name invalid", "affinity {query.room} {\n cookie a;b\n}", "provision", `affinity cookie: "a;b" is not a valid cookie name`},
		{"cookie_secret without cookie", "affinity {query.room} {\n cookie_secret 0123456789abcdef0123\n}", "provision", "affinity cookie_secret needs a cookie"},
		{"cookie_secret too short", "affinity {query.room} {\n cookie wsb\n cookie_secret hunter2\n}", "provision", "affinity cookie_secret: 7 bytes, want at least 16"},
		{"cookie_secret without value", "affinity {query.room} {\n cookie wsb\n cookie_secret\n}", "parse", "wrong argument count or unexpected line ending after 'cookie_secret'"},
		{"cookie_secret from an unset variable", "affinity {query.room} {\n cookie wsb\n cookie_secret {env.WSB_TEST_UNSET_COOKIE_SECRET}\n}", "provision", "affinity cookie_secret:"},
		{"neither key nor cookie", "affinity {\n balance_factor 1.5\n}", "parse", "affinity needs a key, a cookie, or both"},
		{"two keys", "affinity {query.room} {query.user}", "parse", "wrong argument count or unexpected line ending after '{query.user}'"},
		{"affinity given twice", "affinity {query.room}\n affinity {query.user}", "parse", `option "affinity" given twice`},
		{"affinity blocks given twice", "affinity {query.room} {\n cookie a\n}\n affinity {query.room} {\n cookie a\n}", "parse", `option "affinity" given twice`},
		{"weights fewer than backends", "weights 4 2", "provision", "weights: 2 weights for 3 static backends"},
		{"weights more than backends", "weights 4 2 1 1", "provision", "weights: 4 weights for 3 static backends"},
		{"weights zero", "weights 4 0 1", "parse", `weights: "0" is not a positive integer`},
		{"weights negative", "weights 4 -2 1", "parse", `weights: "-2" is not a positive integer`},
		{"weights not a number", "weights 4 two 1", "parse", `weights: "two" is not a positive integer`},
		{"weights fractional", "weights 4 2.5 1", "parse", `weights: "2.5" is not a positive integer`},
		{"weights overflow", "weights 4 99999999999999999999 1", "parse", `weights: "99999999999999999999" is not a positive integer`},
		{"weights empty", "weights", "parse", "wrong argument count or unexpected line ending after 'weights'"},
		{"weights given twice", "weights 4 2 1\n weights 1 1 1", "parse", `option "weights" given twice`},
		{"rebalance ratio below balance_factor", "affinity {query.room} {\n balance_factor 1.5\n}\n rebalance {\n ratio 1.3\n}", "provision",
			"rebalance ratio 1.3 is below the affinity balance_factor 1.5"},
		{"rebalance ratio below the default balance_factor", "affinity {query.room}\n rebalance {\n ratio 1.2\n}", "provision",
			"rebalance ratio 1.2 is below the affinity balance_factor 1.25"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stage, err := provisionHandler(t, backs+" "+tc.input+"\n}")
			if err == nil {
				t.Fatalf("accepted, want an error containing %q", tc.err)
			}
			if stage != tc.stage || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s error %q, want a %s error containing %q", stage, err, tc.stage, tc.err)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error reveals the secret: %q", err)
			}
		})
	}
}

// The same checks hold for a JSON config, which no Caddyfile parser saw:
// Validate refuses it with the offending value.
func TestValidateAffinityJSON(t *testing.T) {
	backends := []string{"127.0.0.1:1", "127.0.0.1:2"}
	for _, tc := range []struct {
		name string
		h    Handler
		err  string
	}{
		{"balance_factor 1", Handler{Backends: backends, Affinity: &AffinityConfig{Key: "{x}", BalanceFactor: 1}}, "balance factor 1: must be a number greater than 1"},
		{"balance_factor below 1", Handler{Backends: backends, Affinity: &AffinityConfig{Key: "{x}", BalanceFactor: 0.5}}, "balance factor 0.5: must be a number greater than 1"},
		{"balance_factor infinite", Handler{Backends: backends, Affinity: &AffinityConfig{Key: "{x}", BalanceFactor: math.Inf(1)}}, "balance factor +Inf"},
		{"no key, no cookie", Handler{Backends: backends, Affinity: &AffinityConfig{BalanceFactor: 2}}, "affinity needs a key, a cookie, or both"},
		{"weights zero", Handler{Backends: backends, Weights: []int64{1, 0}}, "weights: 0 is not a positive integer"},
		{"weights negative", Handler{Backends: backends, Weights: []int64{-3, 1}}, "weights: -3 is not a positive integer"},
		{"weights count", Handler{Backends: backends, Weights: []int64{1}}, "weights: 1 weights for 2 static backends"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.h.Mode = modeProxy
			err := tc.h.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// Rebalance under affinity: an explicit ratio below balance_factor is
// refused with a key (rebalance would close what affinity just placed) and
// the error says what to give instead; without a ratio, the default is
// raised to balance_factor × 1.1 (at least rebalance's own 1.2); a ratio
// at or above balance_factor, or affinity without a key (a sticky cookie
// alone), leaves rebalance as it is.
func TestAffinityRebalanceRatio(t *testing.T) {
	const backs = "ws_balancer 127.0.0.1:1 127.0.0.1:2 {\n"
	t.Run("refused", func(t *testing.T) {
		_, _, err := provisionHandler(t, backs+" affinity {query.room} {\n balance_factor 1.5\n }\n rebalance {\n ratio 1.3\n }\n}")
		if err == nil {
			t.Fatal("a rebalance ratio of 1.3 under balance_factor 1.5 was accepted")
		}
		t.Logf("error: %v", err)
		for _, want := range []string{"rebalance ratio 1.3", "balance_factor 1.5", "a ratio of at least 1.5", "or none (then 1.65)"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	})
	for _, tc := range []struct {
		name  string
		input string
		want  float64 // the ratio in effect after provisioning; 0: rebalance's default
	}{
		{"default raised for 1.25", "affinity {query.room}\n rebalance", 1.375},
		{"default raised for 1.5", "affinity {query.room} {\n balance_factor 1.5\n }\n rebalance", 1.65},
		{"default raised for 2", "affinity {query.room} {\n balance_factor 2\n }\n rebalance", 2.2},
		{"default kept above a small factor", "affinity {query.room} {\n balance_factor 1.05\n }\n rebalance", 1.2},
		{"explicit ratio equal to the factor", "affinity {query.room} {\n balance_factor 1.5\n }\n rebalance {\n ratio 1.5\n }", 1.5},
		{"explicit ratio above the factor", "affinity {query.room}\n rebalance {\n ratio 3\n }", 3},
		{"cookie alone: no key, default kept", "affinity {\n cookie wsb\n }\n rebalance", 0},
		{"cookie alone: low ratio accepted", "affinity {\n cookie wsb\n }\n rebalance {\n ratio 1.1\n }", 1.1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, stage, err := provisionHandler(t, backs+" "+tc.input+"\n}")
			if err != nil {
				t.Fatalf("%s: %v", stage, err)
			}
			if got := h.Rebalance.Ratio; got != tc.want {
				t.Errorf("rebalance ratio %v, want %v", got, tc.want)
			}
		})
	}
}
