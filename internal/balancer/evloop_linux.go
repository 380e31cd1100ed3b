package balancer

import (
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// The event loop relays plain TCP connections without a goroutine per
// connection: a few loops (one per CPU) wait on epoll for every relayed
// socket and move bytes with non-blocking reads and writes through one buffer
// per loop. An idle connection then costs only its small relay record, not
// two goroutine stacks; a connection whose peer reads slowly holds a buffer
// only for the bytes still owed to that peer.
//
// The relay takes the sockets over: it duplicates their descriptors and
// closes Go's net.Conn, so Go's own poller forgets them and nothing else can
// read or write them.

// evLoopBufSize is the read buffer of one loop; it bounds one read.
const evLoopBufSize = 64 << 10

type evLoop struct {
	epfd   int
	wakefd int // eventfd: wakes the loop to run posted commands
	// epoll is epfd as a pollable file: the loop waits for it in Go's own
	// poller, like any goroutine blocked on a socket, instead of holding
	// an OS thread in epoll_wait.
	epoll syscall.RawConn

	mu   sync.Mutex
	cmds []func()
	// regs are sides to enter in sides before the loop handles its next
	// events (register): they need no wake-up.
	regs []evReg

	// Owned by the loop goroutine:
	// sides maps a descriptor to what its events go to. Descriptors are
	// small, dense integers, so a slice indexed by them costs 16 bytes per
	// descriptor where a map cost ~100 per entry (~0.2 KB per connection).
	sides []evTarget
	buf   []byte
	now   int64 // unix nanoseconds at the start of the current batch
	// spawned: the batch started goroutines (hybrid relay workers); the
	// loop lets them run before it takes the next batch (see run).
	spawned bool
}

// evReg is a registration waiting in evLoop.regs.
type evReg struct {
	fd int
	t  evTarget
}

// evTarget is what the loop hands a descriptor's events to: a side of a
// relay the loop runs itself (*evSide), or a socket it watches for a relay
// whose bytes goroutines move (*hyPipe, relay_hybrid_linux.go).
type evTarget interface {
	onEvents(l *evLoop, events uint32)
}

func (s *evSide) onEvents(l *evLoop, events uint32) { l.handle(s, events) }

// evSide is one socket of a relayed connection.
type evSide struct {
	r    *relay
	fd   int
	peer *evSide
	// in is the pipe that reads this socket.
	in *pipe
	// pending holds bytes read from the peer that this socket could not
	// take yet; while it is not empty the peer is not read (backpressure).
	pending []byte
	pendBuf *[]byte
	paused  bool // not reading: the peer has pending bytes
	closed  bool
	events  uint32
}

// evRelay is the event-loop state of a relay.
type evRelay struct {
	loop           *evLoop
	client, server evSide
}

var (
	evLoopsOnce sync.Once
	evLoops     []*evLoop
	evLoopsErr  error
	evNext      atomic.Uint64
)

// eventLoopOff is set by setEventLoop(false).
var eventLoopOff atomic.Bool

// setEventLoop turns the event loop on (the default) or off for connections
// relayed from now on; off, each is relayed by two goroutines, as TLS
// connections always are. For comparisons in benchmarks and tests.
func setEventLoop(on bool) { eventLoopOff.Store(!on) }

// eventLoopErr starts the event loops on first use and reports why they
// could not start (epoll or eventfd refused, say by a seccomp profile): then
// every connection is relayed by two goroutines instead, which works but
// costs far more memory per connection.
func eventLoopErr() error {
	evLoopsOnce.Do(startEvLoops)
	if evLoopsErr == nil && len(evLoops) == 0 {
		return errors.New("no event loop started")
	}
	return evLoopsErr
}

func startEvLoops() {
	n := runtime.GOMAXPROCS(0)
	for range n {
		l, err := newEvLoop()
		if err != nil {
			evLoopsErr = err
			return
		}
		evLoops = append(evLoops, l)
		go l.run()
	}
}

func newEvLoop() (*evLoop, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, err
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	// An epoll descriptor is itself pollable: readable when it has events.
	if err := unix.SetNonblock(epfd, true); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, err
	}
	raw, err := os.NewFile(uintptr(epfd), "ws_balancer-epoll").SyscallConn()
	if err != nil {
		unix.Close(wakefd)
		return nil, err
	}
	return &evLoop{epfd: epfd, wakefd: wakefd, epoll: raw, buf: make([]byte, evLoopBufSize)}, nil
}

// takeFD duplicates the socket of c and closes c, handing the socket to the
// caller. Only plain TCP connections qualify.
func takeFD(c net.Conn) (int, bool) {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return -1, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return -1, false
	}
	fd := -1
	var dupErr error
	if err := raw.Control(func(s uintptr) {
		fd, dupErr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil || dupErr != nil {
		return -1, false
	}
	// Closing Go's descriptor leaves the socket open (the duplicate holds
	// it) and takes it out of Go's poller first.
	tc.Close()
	return fd, true
}

// startEventLoop hands the relay to an event loop if both of its
// connections are plain TCP; it reports false (and changes nothing) if not.
func (r *relay) startEventLoop(client, backend net.Conn) bool {
	if eventLoopOff.Load() {
		return false
	}
	if _, ok := client.(*net.TCPConn); !ok {
		return false
	}
	if _, ok := backend.(*net.TCPConn); !ok {
		return false
	}
	if eventLoopErr() != nil {
		return false // NewProxy has warned
	}
	cfd, ok := takeFD(client)
	if !ok {
		return false
	}
	sfd, ok := takeFD(backend)
	if !ok {
		// The client's Go conn is closed already: relay nothing, end.
		unix.Close(cfd)
		r.closing.Store(true) // not to be tracked
		r.finish("taking over the backend socket failed")
		return true
	}
	l := evLoops[evNext.Add(1)%uint64(len(evLoops))]
	e := &evRelay{loop: l}
	e.client = evSide{r: r, fd: cfd, peer: &e.server, in: &r.up}
	e.server = evSide{r: r, fd: sfd, peer: &e.client, in: &r.down}
	r.ev.Store(e)
	// Added to epoll here, and entered in the loop's sides only when it
	// next takes events (register): an upgrade does not wake the loop.
	// The watch is level-triggered, so an event the loop gets before it
	// knows the side, which it drops, comes again.
	for i, s := range []*evSide{&e.client, &e.server} {
		s.events = unix.EPOLLIN | unix.EPOLLRDHUP
		ev := unix.EpollEvent{Events: s.events, Fd: int32(s.fd)}
		if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
			if i == 1 {
				unix.EpollCtl(l.epfd, unix.EPOLL_CTL_DEL, e.client.fd, nil)
			}
			unix.Close(cfd)
			unix.Close(sfd)
			r.closing.Store(true) // not to be tracked
			r.finish("registering with epoll failed: " + err.Error())
			return true
		}
	}
	l.register(e.client.fd, &e.client, e.server.fd, &e.server)
	return true
}

// side returns what is registered for fd, or nil.
func (l *evLoop) side(fd int) evTarget {
	if fd < 0 || fd >= len(l.sides) {
		return nil
	}
	return l.sides[fd]
}

// setSide registers s for fd (nil: unregisters).
func (l *evLoop) setSide(fd int, s evTarget) {
	if fd >= len(l.sides) {
		if s == nil {
			return
		}
		l.sides = slices.Grow(l.sides, fd+1-len(l.sides))[:fd+1]
	}
	l.sides[fd] = s
}

// register enters two sides in the loop's sides before it handles its next
// events, without waking it: until an event comes, it has nothing to do
// with them.
func (l *evLoop) register(fd1 int, t1 evTarget, fd2 int, t2 evTarget) {
	l.mu.Lock()
	l.regs = append(l.regs, evReg{fd1, t1}, evReg{fd2, t2})
	l.mu.Unlock()
}

// post runs f on the loop goroutine.
func (l *evLoop) post(f func()) {
	l.mu.Lock()
	l.cmds = append(l.cmds, f)
	l.mu.Unlock()
	var one = [8]byte{1}
	unix.Write(l.wakefd, one[:])
}

func (l *evLoop) run() {
	events := make([]unix.EpollEvent, 256)
	var cmds []func()
	var regs []evReg
	var n int
	var werr error
	wait := func(fd uintptr) bool {
		n, werr = unix.EpollWait(int(fd), events, 0)
		// Only "no events at all" waits for the descriptor to become
		// readable again; after anything else the loop comes back.
		return n != 0 || werr != nil
	}
	for {
		if err := l.epoll.Read(wait); err != nil {
			panic("ws_balancer event loop: waiting on epoll: " + err.Error())
		}
		if werr != nil {
			if errors.Is(werr, unix.EINTR) {
				continue
			}
			panic("ws_balancer event loop: epoll_wait: " + werr.Error())
		}
		// One clock read per batch: activity times are for idle timeouts
		// of minutes, and a read per message is a visible cost.
		l.now = time.Now().UnixNano()
		// Registrations first: any event of this batch may be for them.
		l.mu.Lock()
		regs, l.regs = l.regs, regs[:0]
		l.mu.Unlock()
		for _, g := range regs {
			l.setSide(g.fd, g.t)
		}
		clear(regs)
		if cap(regs) > 4096 {
			// A burst of upgrades while no bytes moved: do not keep
			// its array.
			regs = nil
		}
		for i := range n {
			ev := &events[i]
			if int(ev.Fd) == l.wakefd {
				var b [8]byte
				unix.Read(l.wakefd, b[:])
				l.mu.Lock()
				cmds, l.cmds = l.cmds, cmds[:0]
				l.mu.Unlock()
				for _, f := range cmds {
					f()
				}
				clear(cmds)
				continue
			}
			if s := l.side(int(ev.Fd)); s != nil {
				s.onEvents(l, ev.Events)
			}
		}
		if l.spawned {
			// Workers of the hybrid relay started by this batch run
			// first: done, they wait for the next one's work, instead
			// of each event of a burst starting one more (each with its
			// stack: thousands of them at once when 8,000 connections
			// spoke together).
			l.spawned = false
			runtime.Gosched()
		}
	}
}

func (l *evLoop) handle(s *evSide, events uint32) {
	if s.closed {
		return
	}
	if events&unix.EPOLLOUT != 0 && len(s.pending) > 0 {
		if !l.flush(s) {
			return
		}
	}
	if s.paused {
		// Not reading while the peer is owed bytes; but a reset socket
		// reports EPOLLERR/EPOLLHUP whatever the mask, so end it.
		if events&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.end(s.r.ev.Load(), sideName(s)+" connection failed")
		}
		return
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) == 0 {
		return
	}
	n, err := read(s.fd, l.buf)
	switch {
	case err == unix.EAGAIN || err == unix.EINTR:
		return
	case err != nil:
		l.srcEnded(s, err)
		return
	case n == 0:
		l.srcEnded(s, io.EOF)
		return
	}
	p := s.in
	p.frames.observe(l.buf[:n])
	p.bytes.Add(uint64(n))
	s.r.lastActive.Store(l.now)
	l.send(s.peer, l.buf[:n])
}

// send writes b to dst, keeping what it cannot take as pending and pausing
// the reading of its peer until it is flushed.
func (l *evLoop) send(dst *evSide, b []byte) {
	w, err := write(dst.fd, b)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		l.end(dst.r.ev.Load(), sideName(dst)+" write failed")
		return
	}
	w = max(w, 0)
	if w == len(b) {
		return
	}
	dst.pendBuf = getRelayBuf()
	if cap(*dst.pendBuf) < len(b)-w {
		*dst.pendBuf = make([]byte, len(b)-w)
	}
	dst.pending = append((*dst.pendBuf)[:0], b[w:]...)
	dst.peer.paused = true
	l.setEvents(dst.peer)
	l.setEvents(dst)
}

// flush writes a side's pending bytes; it reports false if the relay ended.
func (l *evLoop) flush(s *evSide) bool {
	w, err := write(s.fd, s.pending)
	if err != nil && err != unix.EAGAIN && err != unix.EINTR {
		l.end(s.r.ev.Load(), sideName(s)+" write failed")
		return false
	}
	s.pending = s.pending[max(w, 0):]
	if len(s.pending) == 0 {
		s.pending = nil
		putRelayBuf(s.pendBuf)
		s.pendBuf = nil
		s.peer.paused = false
		l.setEvents(s.peer)
		l.setEvents(s)
	}
	return true
}

func (l *evLoop) setEvents(s *evSide) {
	var want uint32
	if !s.paused {
		want |= unix.EPOLLIN | unix.EPOLLRDHUP
	}
	if len(s.pending) > 0 {
		want |= unix.EPOLLOUT
	}
	if want == s.events || s.closed {
		return
	}
	s.events = want
	ev := unix.EpollEvent{Events: want, Fd: int32(s.fd)}
	unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, s.fd, &ev)
}

// srcEnded mirrors pipe.srcEnded: the other side gets a close frame where
// the stream allows (1001 after a close, 1011 after an error), then both
// close.
func (l *evLoop) srcEnded(s *evSide, err error) {
	code, reason := uint16(protocol.CloseGoingAway), sideName(s)+" closed the connection"
	if !errors.Is(err, io.EOF) {
		code, reason = protocol.CloseInternalError, sideName(s)+" connection failed"
	}
	l.injectClose(s.peer, code, reason)
	l.end(s.r.ev.Load(), reason)
}

// injectClose writes a close frame to dst if the bytes relayed to it end
// between frames, none of them was a close frame, and nothing is pending.
func (l *evLoop) injectClose(dst *evSide, code uint16, reason string) {
	p := dst.peer.in // the pipe that writes to dst
	if dst.closed || len(dst.pending) > 0 || !p.frames.atBoundary() || p.frames.closeSeen {
		return
	}
	// Best effort: a close frame is small, and a peer whose buffer is full
	// is not waited for.
	if _, err := write(dst.fd, closeFrame(code, reason, p.toServer)); err == nil {
		p.frames.closeSeen = true
	}
}

// end closes both sockets once and finishes the relay.
func (l *evLoop) end(e *evRelay, reason string) {
	if e.client.closed {
		return
	}
	r := e.client.r
	r.closing.Store(true)
	r.endOnce.Do(func() { r.endReason = reason })
	for _, s := range []*evSide{&e.client, &e.server} {
		s.closed = true
		l.setSide(s.fd, nil) // untyped nil: no side
		unix.Close(s.fd)
		if s.pendBuf != nil {
			putRelayBuf(s.pendBuf)
			s.pendBuf, s.pending = nil, nil
		}
	}
	r.finish(r.endReason)
}

// closeWith is relay.closeWith for the event loop. It waits (briefly) until
// the loop has sent the close frames, so that a caller about to exit the
// process does not cut them off.
func (e *evRelay) closeWith(code uint16, reason string) {
	done := make(chan struct{})
	e.loop.post(func() {
		defer close(done)
		if e.client.closed {
			return
		}
		e.client.r.endOnce.Do(func() { e.client.r.endReason = "closed by balancer" })
		e.loop.injectClose(&e.client, code, reason)
		e.loop.injectClose(&e.server, code, reason)
		e.loop.end(e, "closed by balancer")
	})
	select {
	case <-done:
	case <-time.After(closeGrace):
	}
}

func sideName(s *evSide) string {
	if s.in.toServer {
		return "client"
	}
	return "backend"
}

// read and write are raw system calls: the sockets are non-blocking, so
// neither can block, and the scheduler need not be told of them (as
// syscall.Read and Write do, twice per call), which on a busy relay is a
// measurable share of the work per message.

func read(fd int, b []byte) (int, error) {
	n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}

// write sends without SIGPIPE: a peer that reset its connection must cost
// an EPIPE error, not a signal. It is send(2) (sendto without an address),
// which unlike sendmsg builds no message header on either side of the call.
func write(fd int, b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)),
		unix.MSG_NOSIGNAL|unix.MSG_DONTWAIT, 0, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(n), nil
}
