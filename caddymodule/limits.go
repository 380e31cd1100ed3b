package caddymodule

import (
	"fmt"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/internal/balancer"
)

// newSourceDialer builds the dialer for source_addresses.
func newSourceDialer(specs []string, dialTimeout time.Duration) (*balancer.SourceDialer, error) {
	addrs, err := balancer.ParseSourceAddrs(specs)
	if err != nil {
		return nil, err
	}
	if dialTimeout <= 0 {
		dialTimeout = 5 * time.Second
	}
	d, err := balancer.NewSourceDialer(addrs, dialTimeout, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("source_addresses: %w", err)
	}
	return d, nil
}
