package caddymodule

import (
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// unmarshalOpsOption parses the operational options of the ws_balancer
// block (see OpsConfig; their syntax is in README.md, "Operations"). It
// reports whether opt was one of them.
func (h *Handler) unmarshalOpsOption(d *caddyfile.Dispenser) (bool, error) {
	c := &h.OpsConfig
	var err error
	switch d.Val() {
	case "drain_close_rate":
		c.DrainCloseRate, err = rateArg(d)
		if err == nil && d.NextArg() {
			err = d.ArgErr()
		}
	case "shutdown_grace":
		err = durationArg(d, &c.ShutdownGrace)
	case "idle_timeout":
		err = durationArg(d, &c.IdleTimeout)
	case "origins":
		args := d.RemainingArgs()
		if len(args) == 0 {
			return true, d.ArgErr()
		}
		c.Origins = append(c.Origins, args...)
	case "max_conns_per_ip":
		c.MaxConnsPerIP, err = intArg(d)
	case "upgrade_rate":
		if c.UpgradeRate, err = rateArg(d); err != nil {
			return true, err
		}
		if d.NextArg() {
			n, aerr := strconv.Atoi(d.Val())
			if aerr != nil || n < 1 {
				return true, d.Errf("upgrade_rate: burst %q is not a positive integer", d.Val())
			}
			c.UpgradeBurst = n
			if d.NextArg() {
				return true, d.ArgErr()
			}
		}
	case "rebalance":
		c.Rebalance, err = unmarshalRebalance(d)
	default:
		return false, nil
	}
	return true, err
}

func unmarshalRebalance(d *caddyfile.Dispenser) (*RebalanceConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	rc := new(RebalanceConfig)
	seen := make(map[string]bool)
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		opt := d.Val()
		if seen[opt] {
			return nil, d.Errf("rebalance option %q given twice", opt)
		}
		seen[opt] = true
		switch opt {
		case "ratio":
			if !d.NextArg() {
				return nil, d.ArgErr()
			}
			f, err := strconv.ParseFloat(d.Val(), 64)
			if err != nil || f <= 1 {
				return nil, d.Errf("rebalance ratio: %q is not a number above 1", d.Val())
			}
			rc.Ratio = f
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		case "after":
			if err := durationArg(d, &rc.After); err != nil {
				return nil, err
			}
		case "rate":
			r, err := rateArg(d)
			if err != nil {
				return nil, err
			}
			rc.Rate = r
			if d.NextArg() {
				return nil, d.ArgErr()
			}
		default:
			return nil, d.Errf("unrecognized rebalance option %q", opt)
		}
	}
	return rc, nil
}

// rateArg reads one rate: a positive number, per second unless suffixed
// /s or /m.
func rateArg(d *caddyfile.Dispenser) (float64, error) {
	opt := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	s, per := d.Val(), 1.0
	switch {
	case strings.HasSuffix(s, "/s"):
		s = strings.TrimSuffix(s, "/s")
	case strings.HasSuffix(s, "/m"):
		s, per = strings.TrimSuffix(s, "/m"), 60
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f <= 0 {
		return 0, d.Errf("%s: %q is not a positive rate (like 100/s or 600/m)", opt, d.Val())
	}
	return f / per, nil
}
