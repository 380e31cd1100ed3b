package balancer

import (
	"crypto/tls"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// The hybrid relay serves connections the event loop cannot relay by
// itself: those with a TLS side (an HTTPS site's clients, wss backends),
// whose bytes only crypto/tls can read and write. The loop watches both
// sockets; while a side is idle it holds no goroutine and no buffer. When
// a socket becomes readable, one goroutine reads what is there (through
// the tls.Conn for a TLS side, with plain non-blocking reads otherwise)
// into pooled buffers, writes it to the other side, and ends, re-arming the
// watch. An idle connection so costs its records and Go's TLS state, not
// two goroutine stacks and a read buffer as with the goroutine pair.
//
// At most one goroutine per direction runs (running). A plain side is
// watched edge-triggered: every arrival of bytes is an event, and a read
// that returns less than asked for has emptied the socket, so the goroutine
// stops there; an event while it runs (again) makes it read once more. A
// TLS side cannot be read that way: crypto/tls reads the socket in chunks
// of its own, which may stop short of what is queued. It is watched one
// shot (EPOLLONESHOT) and re-armed when its goroutine is done, which
// reports a socket still readable at once (level-triggered). What the
// socket cannot report, records the tls.Conn read from it along with the
// last one, tlsBuffered does: the goroutine reads on while the tls.Conn
// holds bytes.
//
// The sockets stay Go's: the loop registers Go's own descriptors, so Go's
// reads, writes, deadlines and Close work as for any connection. Every
// change of a watch goes through the descriptor's RawConn.Control, which
// holds the descriptor open for its duration, and the sockets close only
// after the loop has removed them from epoll: a number reused by another
// connection is never touched.

// The watches on a hybrid side: readable or peer closed, one shot for TLS,
// edge-triggered for plain TCP.
const (
	hyEventsTLS   = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT
	hyEventsPlain = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET
)

// hyRelay is the hybrid state of a relay.
type hyRelay struct {
	loop            *evLoop
	client, backend net.Conn
	up, down        hyPipe // up reads the client, down the backend
	closeFn         func()
}

// hyPipe is one direction of a hybrid relay: it watches src's socket.
type hyPipe struct {
	connPipe
	h   *hyRelay
	src net.Conn
	tls *tls.Conn // src, when it is TLS
	raw syscall.RawConn
	fd  int // src's descriptor (Go's)

	// running is set while a goroutine moves bytes (or is being started);
	// again, by an event that comes meanwhile (plain sides).
	running, again atomic.Bool

	// Prepared once, so that no closure is allocated per event.
	armFn    func(fd uintptr)
	readFn   func(fd uintptr) bool
	unreadFn func(fd uintptr)
	unreadN  int // what unreadFn found
	// State of a plain read (readFn).
	rb   []byte
	rn   int
	rerr error
}

// socketOf returns the socket under c: c itself if plain TCP, its NetConn
// if c is TLS over TCP. ok is false for anything else (an HTTP/2 stream).
func socketOf(c net.Conn) (tc *tls.Conn, raw syscall.RawConn, fd int, ok bool) {
	sock := c
	if t, isTLS := c.(*tls.Conn); isTLS {
		tc, sock = t, t.NetConn()
	}
	tcp, isTCP := sock.(*net.TCPConn)
	if !isTCP {
		return nil, nil, -1, false
	}
	raw, err := tcp.SyscallConn()
	if err != nil {
		return nil, nil, -1, false
	}
	if raw.Control(func(s uintptr) { fd = int(s) }) != nil {
		return nil, nil, -1, false
	}
	return tc, raw, fd, true
}

// startHybrid hands the relay to the hybrid relay if both connections sit
// on TCP sockets and at least one is TLS (plain pairs go to the event loop
// proper); it reports false, changing nothing, otherwise.
func (r *relay) startHybrid(client, backend net.Conn) bool {
	if eventLoopOff.Load() || !tlsPeek.ok || eventLoopErr() != nil {
		return false
	}
	ctls, craw, cfd, ok1 := socketOf(client)
	btls, braw, bfd, ok2 := socketOf(backend)
	if !ok1 || !ok2 || (ctls == nil && btls == nil) {
		return false
	}
	h := &hyRelay{loop: evLoops[evNext.Add(1)%uint64(len(evLoops))], client: client, backend: backend}
	h.closeFn = h.closeConns
	h.up.init(h, &r.up, backend, client, ctls, craw, cfd)
	h.down.init(h, &r.down, client, backend, btls, braw, bfd)
	r.hy = h
	// Bytes the TLS layer read along with the handshake or the request
	// wait there; the socket will not report them. (Checked before the
	// loop can start a reader.)
	var buffered [2]bool
	for i, p := range []*hyPipe{&h.up, &h.down} {
		buffered[i] = p.tls != nil && tlsBuffered(p.tls)
	}
	// Entered in the loop's sides first (the loop takes registrations
	// before the events of a batch), then added to epoll: a one-shot or
	// edge-triggered event must find its pipe. Neither wakes the loop.
	h.loop.register(h.up.fd, &h.up, h.down.fd, &h.down)
	for _, p := range []*hyPipe{&h.up, &h.down} {
		ev := unix.EpollEvent{Events: p.events(), Fd: int32(p.fd)}
		if err := unix.EpollCtl(h.loop.epfd, unix.EPOLL_CTL_ADD, p.fd, &ev); err != nil {
			h.shutdown("registering with epoll failed: " + err.Error())
			return true
		}
	}
	for i, p := range []*hyPipe{&h.up, &h.down} {
		if buffered[i] {
			p.wake()
		}
	}
	return true
}

func (p *hyPipe) init(h *hyRelay, shared *pipe, dst, src net.Conn, tc *tls.Conn, raw syscall.RawConn, fd int) {
	p.pipe, p.h, p.dst, p.src, p.tls, p.raw, p.fd = shared, h, dst, src, tc, raw, fd
	p.armFn = p.arm
	if tc == nil {
		p.readFn = p.readReady
	} else {
		p.unreadFn = p.countUnread
	}
}

func (p *hyPipe) events() uint32 {
	if p.tls != nil {
		return hyEventsTLS
	}
	return hyEventsPlain
}

// onEvents is the loop reporting src readable (or closed, or failed).
func (p *hyPipe) onEvents(l *evLoop, events uint32) {
	if p.wake() {
		l.spawned = true
	}
}

// wake has a worker move bytes, unless one does already: that one reads
// again (plain) or re-arms the watch (TLS) when done, which reports
// anything still unread. It reports whether it started a goroutine.
func (p *hyPipe) wake() bool {
	p.again.Store(true)
	if !p.running.CompareAndSwap(false, true) {
		return false
	}
	return hyDispatch(p)
}

// Workers move bytes for hybrid relays: a few goroutines that take pipes
// with bytes to move from a queue (hyWork), kept between wake-ups, up to
// hyMaxIdle of them idle.
//
// Measured against the alternatives (CPU profiles of 8,000 TLS
// connections echoing at once): a goroutine per wake-up begins with a
// small stack, which crypto/tls grew by copying every time (17% of the
// relay's CPU per message); handing each wake-up to an idle worker, or
// starting one when none was idle, had bursts start hundreds of workers
// on two CPUs, whose start and exit took 7%. With a queue, a worker that
// is done takes the next pipe without parking, and nothing starts or
// exits while the load lasts.
//
// Up to hyRunning workers start as soon as there is work (more would only
// share the CPUs); past that, pipes wait in the queue. A worker may block,
// though, on a client that stopped reading or a record that is still
// arriving; so that such workers cannot hold up everyone else, a watchdog
// starts one more worker whenever work has waited hyStall with none taken
// meanwhile.
var (
	hyWork    = make(chan *hyPipe, 8192)
	hyLive    atomic.Int32 // workers
	hyIdle    atomic.Int32 // workers waiting for work
	hyTaken   atomic.Uint64
	hyRunning = int32(2 * runtime.GOMAXPROCS(0))
	hyMaxIdle = int32(16 * runtime.GOMAXPROCS(0))

	hyWatch      *time.Timer
	hyWatchArmed atomic.Bool
	hyWatchTaken atomic.Uint64 // hyTaken when the watchdog was armed
)

const hyStall = 2 * time.Millisecond

func init() {
	hyWatch = time.AfterFunc(time.Hour, hyWatchFired)
	hyWatch.Stop()
}

// hyDispatch gives p to a worker; it reports whether it started one.
func hyDispatch(p *hyPipe) bool {
	if hyIdle.Load() == 0 && hyLive.Load() < hyRunning {
		hyStart(p)
		return true
	}
	select {
	case hyWork <- p:
		if hyIdle.Load() == 0 {
			hyWatchArm()
		}
		return false
	default: // the queue is full
		hyStart(p)
		return true
	}
}

func hyStart(p *hyPipe) {
	hyLive.Add(1)
	go hyWorker(p)
}

func hyWorker(p *hyPipe) {
	for {
		p.pump()
		select {
		case p = <-hyWork:
			hyTaken.Add(1)
			continue
		default:
		}
		if hyIdle.Add(1) > hyMaxIdle {
			hyIdle.Add(-1)
			hyLive.Add(-1)
			return
		}
		p = <-hyWork
		hyTaken.Add(1)
		hyIdle.Add(-1)
	}
}

// hyWatchArm has the watchdog look at the queue in hyStall, unless it
// will already.
func hyWatchArm() {
	if hyWatchArmed.CompareAndSwap(false, true) {
		hyWatchTaken.Store(hyTaken.Load())
		hyWatch.Reset(hyStall)
	}
}

// hyWatchFired starts a worker for waiting work if no worker took any
// since the watchdog was armed, and looks again while work waits.
func hyWatchFired() {
	taken := hyWatchTaken.Load()
	hyWatchArmed.Store(false)
	if len(hyWork) == 0 {
		return
	}
	if hyTaken.Load() == taken {
		select {
		case p := <-hyWork:
			hyTaken.Add(1)
			hyStart(p)
		default:
		}
	}
	if len(hyWork) > 0 {
		hyWatchArm()
	}
}

func (p *hyPipe) pump() {
	for {
		if p.r.closing.Load() {
			return
		}
		if p.tls != nil {
			for i := 1; ; i++ {
				if !p.moveTLS() {
					return // the relay ended; nothing to re-arm
				}
				if i == hyReadOn || p.r.closing.Load() || !p.unread() {
					break
				}
			}
			p.running.Store(false)
			// Holds the descriptor open: once the relay has closed it,
			// this does nothing.
			p.raw.Control(p.armFn)
			return
		}
		p.again.Store(false)
		if !p.movePlain() {
			return
		}
		p.running.Store(false)
		// An event since again was cleared may be for bytes that came
		// after the last read: read once more, unless a new worker does.
		if !p.again.Load() || !p.running.CompareAndSwap(false, true) {
			return
		}
	}
}

// hyReadOn bounds how many times in a row a worker reads a TLS side whose
// socket already holds more (a client's next record, which came after the
// last read): reading on saves re-arming the watch, the loop's event and a
// trip through the queue behind every other pipe with work, and so halves
// the latency of a message sent right after another; the bound lets the
// others go first when a client keeps sending.
const hyReadOn = 4

// unread reports whether src's socket holds bytes not read yet.
func (p *hyPipe) unread() bool {
	p.unreadN = 0
	p.raw.Control(p.unreadFn)
	return p.unreadN > 0
}

func (p *hyPipe) countUnread(fd uintptr) {
	if n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
		p.unreadN = n
	}
}

func (p *hyPipe) arm(fd uintptr) {
	ev := unix.EpollEvent{Events: hyEventsTLS, Fd: int32(fd)}
	// ENOENT: the relay ended and the loop removed the watch already.
	unix.EpollCtl(p.h.loop.epfd, unix.EPOLL_CTL_MOD, int(fd), &ev)
}

// hySmallSize is the first read of a side per wake-up, from a pool of
// small buffers. Most messages fit, and the 32 KB buffers are taken only
// for what is longer: when thousands of connections wake at once, each
// running worker holds 2 KB, not 32. A TLS record that is still arriving
// (or a client that never sends its end) holds 2 KB while its worker waits
// for the rest.
const hySmallSize = 2 << 10

var hySmallPool = sync.Pool{New: func() any { return new([hySmallSize]byte) }}

// moveTLS reads the records that are ready, and those the tls.Conn holds
// beyond them, and writes them to dst; it reports false if the relay ended.
func (p *hyPipe) moveTLS() bool {
	small := hySmallPool.Get().(*[hySmallSize]byte)
	n, err := p.tls.Read(small[:])
	ok := n == 0 || p.send(small[:n])
	hySmallPool.Put(small)
	if ok && err == nil && tlsBuffered(p.tls) {
		buf := getRelayBuf()
		for ok && err == nil && tlsBuffered(p.tls) {
			n, err = p.tls.Read(*buf)
			ok = n == 0 || p.send((*buf)[:n])
		}
		putRelayBuf(buf)
	}
	return ok && p.ended(err)
}

// movePlain reads src until a read returns less than it asked for (the
// socket is empty then) and writes it to dst; it reports false if the
// relay ended.
func (p *hyPipe) movePlain() bool {
	small := hySmallPool.Get().(*[hySmallSize]byte)
	n, err := p.readPlain(small[:])
	ok := n == 0 || p.send(small[:n])
	hySmallPool.Put(small)
	if ok && err == nil && n == hySmallSize {
		buf := getRelayBuf()
		for ok && err == nil && n > 0 {
			n, err = p.readPlain(*buf)
			ok = n == 0 || p.send((*buf)[:n])
		}
		putRelayBuf(buf)
	}
	return ok && p.ended(err)
}

// ended handles the error of a read: nil means the source goes on (true),
// anything else ends it (false).
func (p *hyPipe) ended(err error) bool {
	if err != nil {
		p.srcEnded(err, p.h.release)
		return false
	}
	return true
}

// readPlain reads what src has, without waiting: 0 and no error if it has
// nothing.
func (p *hyPipe) readPlain(b []byte) (int, error) {
	p.rb, p.rn, p.rerr = b, 0, nil
	if err := p.raw.Read(p.readFn); err != nil {
		return 0, err
	}
	p.rb = nil
	return p.rn, p.rerr
}

// readReady is readPlain's RawConn callback: one non-blocking read. Unlike
// goPipe's, it never asks to wait: nothing to read is a result.
func (p *hyPipe) readReady(fd uintptr) bool {
	p.rn, _, p.rerr = readNonBlocking(read, int(fd), p.rb)
	return true
}

// send writes b to dst; it reports false (and ends the relay) if it failed.
func (p *hyPipe) send(b []byte) bool {
	if err := p.write(b); err != nil {
		p.h.shutdown(p.side(false) + " write failed")
		return false
	}
	return true
}

// shutdown ends the relay once: see release.
func (h *hyRelay) shutdown(reason string) { h.up.r.shutdown(reason, h.release) }

// closeWith: as goRelay.closeWith, the sockets closing through release.
func (h *hyRelay) closeWith(code uint16, reason string) {
	h.up.r.closeConnsWith(&h.up.connPipe, &h.down.connPipe, code, reason, h.release)
}

// release has the loop remove both watches, then closes both connections
// (in a goroutine: closing a tls.Conn may wait to send its close_notify)
// and finishes the relay. A goroutine still moving bytes then fails and
// ends.
func (h *hyRelay) release() {
	h.loop.post(func() {
		for _, p := range []*hyPipe{&h.up, &h.down} {
			if h.loop.side(p.fd) == evTarget(p) {
				h.loop.setSide(p.fd, nil)
				unix.EpollCtl(h.loop.epfd, unix.EPOLL_CTL_DEL, p.fd, nil)
			}
		}
		go h.closeFn()
	})
}

func (h *hyRelay) closeConns() {
	h.client.Close()
	h.backend.Close()
	r := h.up.r
	r.finish(r.endReason)
}
