//go:build !linux

package balancer

import "net"

// setEventLoop has no effect here: the event loop is Linux-only, and every
// connection is relayed by two goroutines.
func setEventLoop(on bool) {}

type evRelay struct{}

// eventLoopErr is nil: without an event loop here, two goroutines per
// connection is the design, not a fallback.
func eventLoopErr() error { return nil }

func (r *relay) startEventLoop(client, backend net.Conn) bool { return false }

func (e *evRelay) closeWith(code uint16, reason string) {}

// hyRelay is the hybrid relay, Linux-only like the event loop it needs.
type hyRelay struct{}

func (r *relay) startHybrid(client, backend net.Conn) bool { return false }

func (h *hyRelay) closeWith(code uint16, reason string) {}
