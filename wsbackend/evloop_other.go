//go:build !linux

package wsbackend

import "net"

// SetEventLoop has no effect here: the event loop is Linux-only, and every
// connection is relayed by two goroutines.
func SetEventLoop(on bool) {}

type evRelay struct{}

func (r *relay) startEventLoop(client, backend net.Conn) bool { return false }

func (e *evRelay) closeWith(code uint16, reason string) {}
