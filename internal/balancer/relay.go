package balancer

import (
	"bufio"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// relay is one proxied WebSocket connection after its handshake: two pipes
// moving raw bytes, one per direction. Frames are not decoded; each pipe only
// follows frame boundaries (frameTracker) so that when one side vanishes the
// other can still be sent a proper close frame.
//
// A relay holds only what every way of relaying needs: an event loop (plain
// TCP on Linux; see evloop_linux.go), the hybrid relay (a TLS side on
// Linux: the loop watches, goroutines move bytes only while there are some;
// relay_hybrid_linux.go) or a pair of goroutines (goRelay, elsewhere and for
// HTTP/2 streams) keeps the rest. It is small because thousands of idle
// connections each hold one.
type relay struct {
	up, down pipe // client to backend, backend to client
	// ev is set when an event loop relays the connection, hy when the
	// hybrid relay does, gr when two goroutines do. Exactly one is set
	// once the relay has started.
	ev atomic.Pointer[evRelay]
	hy *hyRelay
	gr *goRelay

	closing atomic.Bool
	// lastActive is when a pipe last moved bytes (unix nanoseconds), for
	// idle timeouts (Backend.CloseIdle).
	lastActive atomic.Int64
	finish     func(reason string)

	// endReason is set by the pipe that ended first.
	endOnce   sync.Once
	endReason string

	// Links in the Backend's relayList, guarded by Backend.mu.
	prev, next *relay
	tracked    bool
}

// pipe is one direction's state shared by both ways of relaying.
type pipe struct {
	r        *relay
	bytes    *atomic.Uint64
	toServer bool // dst is the backend: injected frames must be masked
	frames   frameTracker
}

// closeGrace bounds the write of a close frame injected into a connection
// whose peer may have stopped reading.
const closeGrace = time.Second

func newRelay(b *Backend, finish func(reason string)) *relay {
	r := &relay{finish: finish}
	r.lastActive.Store(time.Now().UnixNano())
	r.up = pipe{r: r, bytes: &b.bytesUp, toServer: true}
	r.down = pipe{r: r, bytes: &b.bytesDown}
	return r
}

// start relays between client and backend and returns at once: the
// handler's goroutine (with its deep middleware stack) is not kept for the
// life of the connection. Plain TCP goes to an event loop, TLS over TCP to
// the hybrid relay, anything else (an HTTP/2 stream) to two goroutines.
func (r *relay) start(client, backend net.Conn) {
	if r.startEventLoop(client, backend) || r.startHybrid(client, backend) {
		return
	}
	g := &goRelay{client: client, backend: backend}
	g.up.init(&r.up, backend, client)
	g.down.init(&r.down, client, backend)
	g.running.Store(2)
	r.gr = g
	go g.up.run()
	go g.down.run()
}

// closeWith sends each side a close frame where its stream is between frames
// and no close frame went by yet, then shuts the relay down. It serves
// graceful shutdown and draining. The relay must have started.
func (r *relay) closeWith(code uint16, reason string) {
	if ev := r.ev.Load(); ev != nil {
		ev.closeWith(code, reason)
		return
	}
	if r.hy != nil {
		r.hy.closeWith(code, reason)
		return
	}
	r.gr.closeWith(code, reason)
}

// early returns the bytes the pipe's source sent along with its handshake,
// which br has read already, followed and counted as relayed. They stay in
// br, valid until it is reused.
func (p *pipe) early(br *bufio.Reader) []byte {
	b, _ := br.Peek(br.Buffered())
	p.frames.observe(b)
	p.bytes.Add(uint64(len(b)))
	return b
}

// side names the source (src true) or destination of this pipe.
func (p *pipe) side(src bool) string {
	if p.toServer == src {
		return "client"
	}
	return "backend"
}

// connPipe is a pipe whose destination is a net.Conn written from
// goroutines, the pipe's own and closeWith's: what goPipe and hyPipe share.
type connPipe struct {
	*pipe
	dst net.Conn
	// mu serializes writes to dst between the pipe and closeWith.
	mu sync.Mutex
}

// write passes b, read from the source, to dst, unless the relay is
// closing; it follows frames and counts bytes and activity.
func (p *connPipe) write(b []byte) error {
	p.mu.Lock()
	var err error
	if p.r.closing.Load() {
		err = net.ErrClosed
	} else {
		p.frames.observe(b)
		_, err = p.dst.Write(b)
	}
	p.mu.Unlock()
	p.bytes.Add(uint64(len(b)))
	p.r.lastActive.Store(time.Now().UnixNano())
	return err
}

// srcEnded handles the end of the source: unless the relay is already
// closing, the destination gets a close frame if one can be sent cleanly
// (1001 when the source closed, 1011 when it failed), then the relay shuts
// down, stop closing its connections.
func (p *connPipe) srcEnded(err error, stop func()) {
	if p.r.closing.Load() {
		return
	}
	code, reason := uint16(protocol.CloseGoingAway), p.side(true)+" closed the connection"
	if !errors.Is(err, io.EOF) {
		code, reason = protocol.CloseInternalError, p.side(true)+" connection failed"
	}
	p.mu.Lock()
	p.injectClose(code, reason)
	p.mu.Unlock()
	p.r.shutdown(reason, stop)
}

// injectClose writes a close frame to dst when the stream is between frames
// and has not carried a close frame yet. Caller holds p.mu.
func (p *connPipe) injectClose(code uint16, reason string) {
	if !p.frames.atBoundary() || p.frames.closeSeen {
		return
	}
	p.dst.SetWriteDeadline(time.Now().Add(closeGrace))
	if _, err := p.dst.Write(closeFrame(code, reason, p.toServer)); err == nil {
		p.frames.closeSeen = true
	}
}

// shutdown ends, once, a relay whose pipes are connPipes, for reason: stop
// closes its connections (goRelay.closeConns, hyRelay.release).
func (r *relay) shutdown(reason string, stop func()) {
	r.endOnce.Do(func() { r.endReason = reason })
	if r.closing.CompareAndSwap(false, true) {
		stop()
	}
}

// closeConnsWith is closeWith for a relay whose pipes are connPipes (up
// writes to the backend, down to the client); then stop closes its
// connections, as in shutdown.
func (r *relay) closeConnsWith(up, down *connPipe, code uint16, reason string, stop func()) {
	// Writes here can race with the pipes' own writes only after closing is
	// set; pipes check it before every write, so take it first.
	if !r.closing.CompareAndSwap(false, true) {
		return
	}
	r.endOnce.Do(func() { r.endReason = "closed by balancer" })
	// A pipe blocked writing to a peer that stopped reading holds its lock;
	// the deadline frees it within closeGrace.
	deadline := time.Now().Add(closeGrace)
	down.dst.SetWriteDeadline(deadline) // the client
	up.dst.SetWriteDeadline(deadline)   // the backend
	down.mu.Lock()
	down.injectClose(code, reason)
	down.mu.Unlock()
	up.mu.Lock()
	up.injectClose(code, reason)
	up.mu.Unlock()
	stop()
}

// goRelay relays a connection with one goroutine per direction.
type goRelay struct {
	client, backend net.Conn
	up, down        goPipe
	running         atomic.Int32 // pipes still running; the last one out finishes
}

// shutdown ends the relay for reason; the pipes then end on their own.
func (g *goRelay) shutdown(reason string) { g.up.r.shutdown(reason, g.closeConns) }

func (g *goRelay) closeWith(code uint16, reason string) {
	g.up.r.closeConnsWith(&g.up.connPipe, &g.down.connPipe, code, reason, g.closeConns)
}

func (g *goRelay) closeConns() {
	g.client.Close()
	g.backend.Close()
}

func (g *goRelay) pipeDone() {
	if g.running.Add(-1) == 0 {
		r := g.up.r
		r.finish(r.endReason)
	}
}

// goPipe copies one direction in a goroutine. While the source is idle it
// holds no buffer: it waits for readability through syscall.RawConn and
// takes a pooled buffer only when bytes are ready.
type goPipe struct {
	connPipe
	src net.Conn
	raw syscall.RawConn // nil when src cannot be waited on (TLS)

	// State of the RawConn read callback, reused across reads so that no
	// closure is allocated per read.
	buf    *[]byte
	n      int
	err    error
	readFn func(fd uintptr) bool

	// small is what a source without RawConn (TLS) waits with; drain: the
	// source is a *tls.Conn, whose buffered records a read past its
	// deadline returns. See readBlocking.
	small *[smallReadSize]byte
	drain bool
}

// smallReadSize is the buffer a TLS source is read into while it may be
// idle: it bounds what an idle TLS connection holds (not a pooled 32 KB
// buffer), and most WebSocket messages fit.
const smallReadSize = 1024

// aLongTimeAgo is a read deadline that has passed: a read then returns
// only what is buffered already.
var aLongTimeAgo = time.Unix(1, 0)

func (p *goPipe) init(shared *pipe, dst, src net.Conn) {
	p.pipe, p.dst, p.src = shared, dst, src
	if sc, ok := src.(syscall.Conn); ok && rawReads {
		if raw, err := sc.SyscallConn(); err == nil {
			p.raw = raw
			p.readFn = p.readReady
			return
		}
	}
	p.small = new([smallReadSize]byte)
	_, p.drain = src.(*tls.Conn)
}

func (p *goPipe) run() {
	g := p.r.gr
	defer g.pipeDone()
	for {
		buf, n, err := p.read()
		if n > 0 {
			werr := p.write((*buf)[:n])
			putRelayBuf(buf)
			if werr != nil {
				g.shutdown(p.side(false) + " write failed")
				return
			}
		} else if buf != nil {
			putRelayBuf(buf)
		}
		if err != nil {
			p.srcEnded(err, g.closeConns)
			return
		}
	}
}

// read returns the next bytes from src in a pooled buffer.
func (p *goPipe) read() (*[]byte, int, error) {
	if p.raw == nil {
		return p.readBlocking()
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

// readBlocking reads a source that cannot be waited on without reading
// (TLS: the socket's readiness says nothing of the records the TLS layer
// has buffered already; an HTTP/2 stream has no socket of its own). It
// waits in a read into the pipe's small buffer, so that an idle connection
// holds 1 KB instead of a pooled 32 KB one. When that fills and the source
// is TLS, it takes what the TLS layer holds beyond it into the pooled
// buffer with a read whose deadline has passed: it returns at once with the
// buffered bytes, or a timeout, which the TLS layer does not keep as an
// error. (Other sources are read 1 KB at a time: an HTTP/2 body, say, ends
// for good when a read deadline passes.)
func (p *goPipe) readBlocking() (*[]byte, int, error) {
	n, err := p.src.Read(p.small[:])
	buf := getRelayBuf()
	copy(*buf, p.small[:n])
	if err != nil || n < len(p.small) || !p.drain {
		return buf, n, err
	}
	if p.src.SetReadDeadline(aLongTimeAgo) != nil {
		return buf, n, nil
	}
	m, err := p.src.Read((*buf)[n:])
	if derr := p.src.SetReadDeadline(time.Time{}); derr != nil && err == nil {
		err = derr
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		err = nil
	}
	return buf, n + m, err
}
