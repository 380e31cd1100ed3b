package wsbackend

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// relay is one proxied WebSocket connection after its handshake: two pipes
// moving raw bytes, one per direction. Frames are not decoded; each pipe only
// follows frame boundaries (frameTracker) so that when one side vanishes the
// other can still be sent a proper close frame.
type relay struct {
	client, backend net.Conn
	up, down        pipe // client to backend, backend to client
	// ev is set when an event loop relays the connection instead of the
	// pipes' goroutines (plain TCP on Linux; see evloop_linux.go).
	ev atomic.Pointer[evRelay]

	closing atomic.Bool
	// lastActive is when a pipe last moved bytes (unix nanoseconds), for
	// idle timeouts (Backend.CloseIdle).
	lastActive atomic.Int64
	running    atomic.Int32 // pipes still running; the last one out finishes
	finish     func(reason string)

	// endReason is set by the pipe that ended first.
	endOnce   sync.Once
	endReason string
}

// closeGrace bounds the write of a close frame injected into a connection
// whose peer may have stopped reading.
const closeGrace = time.Second

func newRelay(client, backend net.Conn, b *Backend, finish func(reason string)) *relay {
	r := &relay{client: client, backend: backend, finish: finish}
	r.lastActive.Store(time.Now().UnixNano())
	r.up.init(r, backend, client, &b.bytesUp, true)
	r.down.init(r, client, backend, &b.bytesDown, false)
	return r
}

// start runs both pipes in goroutines of their own and returns at once: the
// handler's goroutine (with its deep middleware stack) is not kept for the
// life of the connection.
func (r *relay) start() {
	if r.startEventLoop() {
		return
	}
	r.running.Store(2)
	go r.up.run()
	go r.down.run()
}

// shutdown closes both connections once; the pipes then end on their own.
func (r *relay) shutdown(reason string) {
	r.endOnce.Do(func() { r.endReason = reason })
	if r.closing.CompareAndSwap(false, true) {
		r.client.Close()
		r.backend.Close()
	}
}

// closeWith sends each side a close frame where its stream is between frames
// and no close frame went by yet, then shuts the relay down. It serves
// graceful shutdown and draining.
func (r *relay) closeWith(code uint16, reason string) {
	// Writes here can race with the pipes' own writes only after closing is
	// set; pipes check it before every write, so take it first.
	if ev := r.ev.Load(); ev != nil {
		ev.closeWith(code, reason)
		return
	}
	if !r.closing.CompareAndSwap(false, true) {
		return
	}
	r.endOnce.Do(func() { r.endReason = "closed by balancer" })
	// A pipe blocked writing to a peer that stopped reading holds its lock;
	// the deadline frees it within closeGrace.
	deadline := time.Now().Add(closeGrace)
	r.client.SetWriteDeadline(deadline)
	r.backend.SetWriteDeadline(deadline)
	r.down.mu.Lock()
	r.down.injectClose(code, reason)
	r.down.mu.Unlock()
	r.up.mu.Lock()
	r.up.injectClose(code, reason)
	r.up.mu.Unlock()
	r.client.Close()
	r.backend.Close()
}

func (r *relay) pipeDone() {
	if r.running.Add(-1) == 0 {
		r.finish(r.endReason)
	}
}

// pipe copies one direction. While the source is idle it holds no buffer:
// it waits for readability through syscall.RawConn and takes a pooled buffer
// only when bytes are ready.
type pipe struct {
	r        *relay
	dst, src net.Conn
	raw      syscall.RawConn // nil when src cannot be waited on (TLS)
	bytes    *atomic.Uint64
	toServer bool // dst is the backend: injected frames must be masked

	// mu serializes writes to dst between the pipe and closeWith.
	mu     sync.Mutex
	frames frameTracker

	// State of the RawConn read callback, reused across reads so that no
	// closure is allocated per read.
	buf    *[]byte
	n      int
	err    error
	readFn func(fd uintptr) bool
}

func (p *pipe) init(r *relay, dst, src net.Conn, bytes *atomic.Uint64, toServer bool) {
	p.r, p.dst, p.src, p.bytes, p.toServer = r, dst, src, bytes, toServer
	if sc, ok := src.(syscall.Conn); ok && rawReads {
		if raw, err := sc.SyscallConn(); err == nil {
			p.raw = raw
			p.readFn = p.readReady
		}
	}
}

func (p *pipe) run() {
	defer p.r.pipeDone()
	for {
		buf, n, err := p.read()
		if n > 0 {
			p.mu.Lock()
			var werr error
			if p.r.closing.Load() {
				werr = net.ErrClosed
			} else {
				p.frames.observe((*buf)[:n])
				_, werr = p.dst.Write((*buf)[:n])
			}
			p.mu.Unlock()
			putRelayBuf(buf)
			p.bytes.Add(uint64(n))
			p.r.lastActive.Store(time.Now().UnixNano())
			if werr != nil {
				p.r.shutdown(p.side(false) + " write failed")
				return
			}
		} else if buf != nil {
			putRelayBuf(buf)
		}
		if err != nil {
			p.srcEnded(err)
			return
		}
	}
}

// srcEnded handles the end of the source: unless the relay is already
// closing, the destination gets a close frame if one can be sent cleanly
// (1001 when the source closed, 1011 when it failed), then both close.
func (p *pipe) srcEnded(err error) {
	if p.r.closing.Load() {
		return
	}
	code, reason := uint16(CloseGoingAway), p.side(true)+" closed the connection"
	if !errors.Is(err, io.EOF) {
		code, reason = CloseInternalError, p.side(true)+" connection failed"
	}
	p.mu.Lock()
	p.injectClose(code, reason)
	p.mu.Unlock()
	p.r.shutdown(reason)
}

// injectClose writes a close frame to dst when the stream is between frames
// and has not carried a close frame yet. Caller holds p.mu.
func (p *pipe) injectClose(code uint16, reason string) {
	if !p.frames.atBoundary() || p.frames.closeSeen {
		return
	}
	p.dst.SetWriteDeadline(time.Now().Add(closeGrace))
	if _, err := p.dst.Write(closeFrame(code, reason, p.toServer)); err == nil {
		p.frames.closeSeen = true
	}
}

// side names the source (src true) or destination of this pipe.
func (p *pipe) side(src bool) string {
	if p.toServer == src {
		return "client"
	}
	return "backend"
}

// read returns the next bytes from src in a pooled buffer.
func (p *pipe) read() (*[]byte, int, error) {
	if p.raw == nil {
		buf := getRelayBuf()
		n, err := p.src.Read(*buf)
		return buf, n, err
	}
	p.n, p.err = 0, nil
	if err := p.raw.Read(p.readFn); err != nil {
		if p.buf != nil {
			putRelayBuf(p.buf)
			p.buf = nil
		}
		return nil, 0, err
	}
	buf := p.buf
	p.buf = nil
	return buf, p.n, p.err
}
