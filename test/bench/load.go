package main

// The load client: it runs in the tool's own process.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// loadClient dials WebSocket connections from several loopback source
// addresses (127.0.0.2 .. 127.0.0.(k+1)), round robin, so that the client
// does not run out of ephemeral ports (bind() with port 0 allocates per
// source address, and earlier repetitions leave sockets in TIME_WAIT).
type loadClient struct {
	dialers []*websocket.Dialer
	next    atomic.Uint64
}

func newLoadClient(srcIPs int, handshakeTimeout time.Duration, tlsConfig *tls.Config) *loadClient {
	if srcIPs < 1 {
		srcIPs = 1
	}
	lc := &loadClient{}
	for i := 0; i < srcIPs; i++ {
		ip := net.IPv4(127, 0, byte((i+2)/256), byte((i+2)%256))
		nd := &net.Dialer{LocalAddr: &net.TCPAddr{IP: ip}, Timeout: handshakeTimeout}
		lc.dialers = append(lc.dialers, &websocket.Dialer{
			NetDialContext: nd.DialContext,
			// -tls: see clientTLSConfig.
			TLSClientConfig:  tlsConfig,
			HandshakeTimeout: handshakeTimeout,
			ReadBufferSize:   1024,
			WriteBufferSize:  1024,
		})
	}
	return lc
}

func (lc *loadClient) dial(ctx context.Context, url string) (*websocket.Conn, error) {
	d := lc.dialers[lc.next.Add(1)%uint64(len(lc.dialers))]
	c, resp, err := d.DialContext(ctx, url, nil)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("%w (HTTP %s)", err, resp.Status)
		}
		return nil, err
	}
	return c, nil
}

// wconn is one client connection.
type wconn struct {
	c      *websocket.Conn
	dead   bool // an echo or ping failed on it
	pongAt time.Time
}

// errCounter keeps the number of errors and the first few distinct ones.
type errCounter struct {
	mu    sync.Mutex
	n     int
	first []string
}

func (e *errCounter) add(err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	s := err.Error()
	for _, f := range e.first {
		if f == s {
			return
		}
	}
	if len(e.first) < 3 {
		e.first = append(e.first, s)
	}
}

func (e *errCounter) String() string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.n == 0 {
		return ""
	}
	return fmt.Sprintf("%d errors, e.g. %q", e.n, e.first)
}

// unblockOnCancel makes every pending read/write of conns return when ctx is
// cancelled (e.g. on SIGINT or when the overall timeout expires).
func unblockOnCancel(ctx context.Context, conns []*wconn) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		for _, w := range conns {
			if w != nil {
				_ = w.c.NetConn().SetDeadline(time.Now())
			}
		}
	})
}

type connectResult struct {
	conns    []*wconn // nil entries for failed connects
	ok, fail int
	wall     time.Duration
	lat      []time.Duration // per successful handshake
	errs     errCounter
}

// connectAll opens n connections, urls[i%len(urls)] for the i-th, with at
// most conc handshakes in flight. wall is the time until all n are upgraded.
func connectAll(ctx context.Context, lc *loadClient, urls []string, n, conc int) *connectResult {
	r := &connectResult{conns: make([]*wconn, n)}
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	if conc < 1 {
		conc = 1
	}
	if conc > n {
		conc = n
	}
	start := time.Now()
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if ctx.Err() != nil {
					r.errs.add(ctx.Err())
					continue
				}
				t0 := time.Now()
				c, err := lc.dial(ctx, urls[i%len(urls)])
				if err != nil {
					r.errs.add(err)
					continue
				}
				lat[i] = time.Since(t0)
				r.conns[i] = &wconn{c: c}
			}
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	for i, c := range r.conns {
		if c == nil {
			r.fail++
			continue
		}
		r.ok++
		r.lat = append(r.lat, lat[i])
		w := c
		c.c.SetPongHandler(func(string) error { w.pongAt = time.Now(); return nil })
	}
	return r
}

type echoResult struct {
	ok, fail int
	wall     time.Duration // summed over rounds
	lat      []time.Duration
	errs     errCounter
}

func fillPayload(buf []byte, conn, round int) {
	for i := range buf {
		buf[i] = 'a' + byte((i+conn+round)%26)
	}
	if len(buf) >= 16 {
		binary.LittleEndian.PutUint64(buf[0:], uint64(conn))
		binary.LittleEndian.PutUint64(buf[8:], uint64(round))
	}
}

// echoRounds runs `rounds` rounds; in each, every live connection sends one
// binary message of msgSize bytes and waits for its echo. A round ends when
// every connection has its echo or failed; each round has its own deadline.
func echoRounds(ctx context.Context, conns []*wconn, rounds, msgSize int, roundTimeout time.Duration) *echoResult {
	r := &echoResult{}
	lat := make([]time.Duration, len(conns)*rounds)
	for round := 0; round < rounds && ctx.Err() == nil; round++ {
		deadline := time.Now().Add(roundTimeout)
		if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
		var ok, fail atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for i, w := range conns {
			if w == nil {
				continue // failed connect: counted there
			}
			if w.dead {
				fail.Add(1)
				continue
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, msgSize)
				fillPayload(buf, i, round)
				_ = w.c.SetWriteDeadline(deadline)
				_ = w.c.SetReadDeadline(deadline)
				t0 := time.Now()
				if err := w.c.WriteMessage(websocket.BinaryMessage, buf); err != nil {
					w.dead = true
					fail.Add(1)
					r.errs.add(fmt.Errorf("write: %w", err))
					return
				}
				mt, got, err := w.c.ReadMessage()
				d := time.Since(t0)
				if err != nil {
					w.dead = true
					fail.Add(1)
					r.errs.add(fmt.Errorf("read: %w", err))
					return
				}
				if mt != websocket.BinaryMessage || !bytes.Equal(got, buf) {
					w.dead = true
					fail.Add(1)
					r.errs.add(errors.New("echo differs from message sent"))
					return
				}
				lat[round*len(conns)+i] = d
				ok.Add(1)
			}()
		}
		wg.Wait()
		r.wall += time.Since(start)
		r.ok += int(ok.Load())
		r.fail += int(fail.Load())
		if ctx.Err() != nil {
			break
		}
	}
	for _, d := range lat {
		if d > 0 {
			r.lat = append(r.lat, d)
		}
	}
	return r
}

// pingRound: every live connection sends a ping, then a small data message;
// the pong must arrive before that message's echo. Latency is from the ping
// write to the pong, as seen by the pong handler.
func pingRound(ctx context.Context, conns []*wconn, timeout time.Duration) *echoResult {
	r := &echoResult{}
	lat := make([]time.Duration, len(conns))
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	if ctx.Err() != nil {
		return r
	}
	var ok, fail atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for i, w := range conns {
		if w == nil {
			continue
		}
		if w.dead {
			fail.Add(1)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			payload := []byte(fmt.Sprintf("ping-%d", i))
			marker := []byte(fmt.Sprintf("after-ping-%d", i))
			_ = w.c.SetReadDeadline(deadline)
			_ = w.c.SetWriteDeadline(deadline)
			w.pongAt = time.Time{}
			t0 := time.Now()
			if err := w.c.WriteControl(websocket.PingMessage, payload, deadline); err != nil {
				w.dead = true
				fail.Add(1)
				r.errs.add(fmt.Errorf("ping write: %w", err))
				return
			}
			if err := w.c.WriteMessage(websocket.TextMessage, marker); err != nil {
				w.dead = true
				fail.Add(1)
				r.errs.add(fmt.Errorf("write: %w", err))
				return
			}
			_, got, err := w.c.ReadMessage()
			if err != nil {
				w.dead = true
				fail.Add(1)
				r.errs.add(fmt.Errorf("read: %w", err))
				return
			}
			if !bytes.Equal(got, marker) {
				w.dead = true
				fail.Add(1)
				r.errs.add(errors.New("echo differs from message sent"))
				return
			}
			if w.pongAt.IsZero() {
				fail.Add(1)
				r.errs.add(errors.New("no pong before the echo of the next message"))
				return
			}
			lat[i] = w.pongAt.Sub(t0)
			ok.Add(1)
		}()
	}
	wg.Wait()
	r.wall = time.Since(start)
	r.ok, r.fail = int(ok.Load()), int(fail.Load())
	for _, d := range lat {
		if d > 0 {
			r.lat = append(r.lat, d)
		}
	}
	return r
}

func closeAll(conns []*wconn) {
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, w := range conns {
		if w == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			_ = w.c.Close()
		}()
	}
	wg.Wait()
}

// probe opens one connection to url, echoes one message and closes it.
func probe(ctx context.Context, lc *loadClient, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	c, err := lc.dial(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close()
	dl, _ := ctx.Deadline()
	_ = c.SetReadDeadline(dl)
	_ = c.SetWriteDeadline(dl)
	msg := []byte("probe")
	if err := c.WriteMessage(websocket.TextMessage, msg); err != nil {
		return err
	}
	_, got, err := c.ReadMessage()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("probe: echo differs")
	}
	return nil
}

// percentile returns the p-th percentile (0..100, nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := int(p/100*float64(len(s))+0.5) - 1
	if k < 0 {
		k = 0
	}
	if k >= len(s) {
		k = len(s) - 1
	}
	return s[k]
}

// backendClient reads the echo backend's /stats.
type backendClient struct {
	hc  *http.Client
	url string
}

func (b *backendClient) stats(ctx context.Context) (backendStats, error) {
	var s backendStats
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url, nil)
	if err != nil {
		return s, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("backend stats: HTTP %s", resp.Status)
	}
	err = jsonDecode(resp, &s)
	return s, err
}

func (s backendStats) total() int64 {
	var t int64
	for _, a := range s.Active {
		t += a
	}
	return t
}

// waitBackendActive waits until the backend holds at most `want` WebSocket
// connections, or the timeout passes; it returns the last count seen.
func (b *backendClient) waitActive(ctx context.Context, want int64, timeout time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := int64(-1)
	for {
		s, err := b.stats(ctx)
		if err == nil {
			last = s.total()
			if last <= want {
				return last, nil
			}
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return last, err
			}
			return last, fmt.Errorf("backend still holds %d connections after %v", last, timeout)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
