package balancer

import (
	"bytes"
	"crypto/tls"
	"io"
	"net"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"
)

// tlsBuffered sees what a tls.Conn holds beyond its socket: records read
// along with an earlier one, and decrypted bytes a short read left. If a Go
// release changes the fields it reads, this fails, and until then TLS
// connections fall back to the goroutine pair.
func TestTLSBufferedPeek(t *testing.T) {
	if !tlsPeek.ok {
		t.Fatal("crypto/tls.Conn has no input/rawInput fields of the expected types: tlsBuffered is off")
	}
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS() // only for its certificate
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan *tls.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		s := tls.Server(c, srv.TLS)
		s.SetDeadline(time.Now().Add(10 * time.Second))
		if s.Handshake() != nil {
			close(accepted)
			return
		}
		accepted <- s
	}()
	client, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server := <-accepted
	if server == nil {
		t.Fatal("accept or server handshake failed")
	}
	defer server.Close()
	if tlsBuffered(server) {
		t.Fatal("buffered before anything was sent")
	}

	// Three records in one go: the first read takes them all off the
	// socket, returns the first one's bytes and keeps the rest.
	var sent []byte
	for i := range 3 {
		rec := bytes.Repeat([]byte{byte('a' + i)}, 100)
		sent = append(sent, rec...)
		if _, err := client.Write(rec); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(100 * time.Millisecond) // all three on the server's socket
	got := make([]byte, 0, len(sent))
	buf := make([]byte, 40) // short reads leave decrypted bytes too
	for len(got) < len(sent) {
		n, err := server.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, buf[:n]...)
		if want := len(got) < len(sent); tlsBuffered(server) != want {
			t.Fatalf("after %d of %d bytes: tlsBuffered %v, want %v", len(got), len(sent), !want, want)
		}
	}
	if !bytes.Equal(got, sent) {
		t.Fatalf("read %q, want %q", got, sent)
	}
	client.Close()
	if _, err := server.Read(buf); err != io.EOF {
		t.Fatalf("after close: %v, want EOF", err)
	}
}

// The memory a relayed TLS connection cannot shed, whatever the relay: Go's
// server-side TLS state (tls.Conn, two AES-GCM states, secrets and record
// buffers) and the TCP connection under it, live heap per connection after
// a handshake and one message each way, measured (go test -run
// ConnStateSize -v ./internal/balancer), for a client offering X25519 only and one
// offering Go's defaults (X25519MLKEM768 first, as browsers do now: a
// larger key share, larger handshake buffers kept). With Go's default GOGC
// the heap peaks at twice the live heap, so a Go proxy's RSS per
// connection is at least twice this.
func TestConnStateSize(t *testing.T) {
	for _, tc := range []struct {
		name   string
		curves []tls.CurveID
	}{{"X25519", []tls.CurveID{tls.X25519}}, {"Go default", nil}} {
		t.Run(tc.name, func(t *testing.T) { connStateSize(t, tc.curves) })
	}
}

func connStateSize(t *testing.T, curves []tls.CurveID) {
	const n = 500
	srv := httptest.NewUnstartedServer(nil)
	srv.StartTLS() // only for its certificate
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	servers := make(chan *tls.Conn, n)
	go func() {
		for range n {
			c, err := ln.Accept()
			if err != nil {
				close(servers)
				return
			}
			go func() {
				s := tls.Server(c, srv.TLS)
				b := make([]byte, 64)
				s.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadFull(s, b); err != nil {
					t.Error(err)
				}
				s.Write(b)
				servers <- s
			}()
		}
	}()
	clients := make([]*tls.Conn, 0, n)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for range n {
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{InsecureSkipVerify: true, CurvePreferences: curves})
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, c)
		c.Write(make([]byte, 64))
		io.ReadFull(c, make([]byte, 64))
	}
	tlsConns := make([]*tls.Conn, 0, n)
	for range n {
		tlsConns = append(tlsConns, <-servers)
	}
	liveHeap := func() uint64 {
		var m runtime.MemStats
		runtime.GC()
		runtime.GC()
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	withTLS := liveHeap()
	tcpConns := make([]net.Conn, 0, n)
	for _, s := range tlsConns {
		tcpConns = append(tcpConns, s.NetConn())
	}
	tlsConns = nil
	withTCP := liveHeap()
	for _, c := range tcpConns {
		c.Close()
	}
	tcpConns = nil
	without := liveHeap()
	tlsState := (float64(withTLS) - float64(withTCP)) / n
	tcpState := (float64(withTCP) - float64(without)) / n
	cs := clients[0].ConnectionState()
	t.Logf("live heap per server connection: Go's TLS state %.0f B, its *net.TCPConn %.0f B (%s, %s, %s)",
		tlsState, tcpState, tls.VersionName(cs.Version), cs.CurveID, tls.CipherSuiteName(cs.CipherSuite))
	if tlsState < 1000 || tlsState > 20000 {
		t.Errorf("TLS state %.0f B per connection: the measurement is off", tlsState)
	}
}
