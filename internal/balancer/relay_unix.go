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
	n, wait, err := readNonBlocking(syscall.Read, int(fd), *p.buf)
	if wait {
		putRelayBuf(p.buf)
		p.buf = nil
		return false
	}
	p.n, p.err = n, err
	return true
}

// readNonBlocking reads the non-blocking descriptor fd once into b with
// read, retrying when a signal interrupted it. wait reports that fd had
// nothing to read (EAGAIN); the end of the stream is io.EOF.
func readNonBlocking(read func(fd int, b []byte) (int, error), fd int, b []byte) (n int, wait bool, err error) {
	for {
		n, err := read(fd, b)
		switch {
		case err == syscall.EINTR:
			continue
		case err == syscall.EAGAIN:
			return 0, true, nil
		case err != nil:
			return 0, false, err
		case n == 0:
			return 0, false, io.EOF
		}
		return n, false, nil
	}
}
