//go:build !unix

package balancer

// rawReads is false here: pipes read through net.Conn with a pooled buffer.
const rawReads = false

func (p *goPipe) readReady(fd uintptr) bool { return true }
