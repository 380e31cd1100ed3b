//go:build unix

package balancer

import (
	"io"
	"syscall"
)

// rawReads: waiting for readability without a buffer needs a raw read on
// the descriptor.
const rawReads = true

// readReady is the RawConn callback: it reads into a pooled buffer if bytes
// are ready, and otherwise gives the buffer back and lets the runtime poller
// wait for readability (returning false).
func (p *goPipe) readReady(fd uintptr) bool {
	if p.buf == nil {
		p.buf = getRelayBuf()
	}
	for {
		n, err := syscall.Read(int(fd), *p.buf)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			putRelayBuf(p.buf)
			p.buf = nil
			return false
		case err != nil:
			p.err = err
		case n == 0:
			p.err = io.EOF
		default:
			p.n = n
		}
		return true
	}
}
