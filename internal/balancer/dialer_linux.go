package balancer

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// bindAddressNoPort sets IP_BIND_ADDRESS_NO_PORT: the source port is then
// chosen at connect time, unique per destination, instead of at bind time,
// unique across all destinations.
func bindAddressNoPort(network, address string, c syscall.RawConn) error {
	var sockErr error
	err := c.Control(func(fd uintptr) {
		sockErr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
	})
	if err != nil {
		return err
	}
	if sockErr != nil {
		return fmt.Errorf("setting IP_BIND_ADDRESS_NO_PORT: %w", sockErr)
	}
	return nil
}
