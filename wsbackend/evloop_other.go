//go:build !linux

package wsbackend

// EventLoopDisabled has no effect here: the event loop is Linux-only, and
// every connection is relayed by two goroutines.
var EventLoopDisabled bool

type evRelay struct{}

func (r *relay) startEventLoop() bool { return false }

func (e *evRelay) closeWith(code uint16, reason string) {}
