//go:build !linux

package balancer

import "syscall"

// bindAddressNoPort: IP_BIND_ADDRESS_NO_PORT is Linux-only; elsewhere each
// source address binds a port per connection as usual.
func bindAddressNoPort(network, address string, c syscall.RawConn) error { return nil }
