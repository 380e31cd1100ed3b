package caddymodule

import (
	"math"
	"strconv"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalAffinityOption parses the affinity block and the static
// backends' weights (syntax in docs/affinity.md and README.md):
//
//	affinity [<key>] {
//		balance_factor <c>
//		cookie <name>
//		cookie_secret <secret>
//	}
//	weights <n...>
//
// It reports whether the option was one of them.
func (h *Handler) unmarshalAffinityOption(d *caddyfile.Dispenser) (bool, error) {
	switch d.Val() {
	case "weights":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		for _, a := range args {
			n, err := strconv.ParseInt(a, 10, 64)
			if err != nil || n < 1 {
				return true, d.Errf("weights: %q is not a positive integer", a)
			}
			h.Weights = append(h.Weights, n)
		}
		return true, nil
	case "affinity":
		c := new(AffinityConfig)
		if d.NextArg() {
			c.Key = d.Val()
		}
		if d.NextArg() {
			return true, d.ArgErr()
		}
		seen := make(map[string]bool)
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			opt := d.Val()
			if seen[opt] {
				return true, d.Errf("affinity option %q given twice", opt)
			}
			seen[opt] = true
			switch opt {
			case "balance_factor":
				if !d.NextArg() {
					return true, d.ArgErr()
				}
				f, err := strconv.ParseFloat(d.Val(), 64)
				if err != nil || !(f > 1) || math.IsInf(f, 1) {
					return true, d.Errf("balance_factor: %q is not a number above 1", d.Val())
				}
				c.BalanceFactor = f
			case "cookie":
				if !d.NextArg() {
					return true, d.ArgErr()
				}
				c.Cookie = d.Val()
			case "cookie_secret":
				if !d.NextArg() {
					return true, d.ArgErr()
				}
				c.CookieSecret = d.Val()
			default:
				return true, d.Errf("unrecognized affinity option %q", opt)
			}
			if d.NextArg() {
				return true, d.ArgErr()
			}
		}
		if c.Key == "" && c.Cookie == "" {
			return true, d.Err("affinity needs a key, a cookie, or both")
		}
		h.Affinity = c
		return true, nil
	}
	return false, nil
}
