package caddymodule

import (
	"fmt"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

// newSourceDialer builds the dialer for source_addresses.
func newSourceDialer(specs []string, dialTimeout time.Duration) (*wsbackend.SourceDialer, error) {
	addrs, err := wsbackend.ParseSourceAddrs(specs)
	if err != nil {
		return nil, err
	}
	if dialTimeout <= 0 {
		dialTimeout = 5 * time.Second
	}
	d, err := wsbackend.NewSourceDialer(addrs, dialTimeout, 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("source_addresses: %w", err)
	}
	return d, nil
}
