package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/net/http2"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// WebSockets over HTTP/2 streams (RFC 8441 extended CONNECT), which Go's
// HTTP/2 server offers when run with GODEBUG=http2xconnect=1 and browsers
// then use: the backend gets an HTTP/1.1 upgrade with a key of the
// balancer's, the client 200 with the backend's subprotocol, and frames pass
// both ways, small and large, with close codes; the stream outlives a config
// reload and ends, with a close frame, when the backend goes away.
//
// Not parallel: it sets GODEBUG for the Caddy process it starts.
func TestExtendedConnectHTTP2(t *testing.T) {
	t.Setenv("GODEBUG", "http2xconnect=1")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	backend := harness.StartEcho(t, harness.EchoOptions{Subprotocols: []string{"chat.v2"}})
	caddy := harness.StartCaddyTLS(t, site([]*harness.EchoBackend{backend}, ""))

	// x/net's HTTP/2 transport: net/http's own refuses the :protocol
	// pseudo-header before it gets to HTTP/2.
	tr := &http2.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	t.Cleanup(tr.CloseIdleConnections)
	open := func(t *testing.T, h http.Header) (*h2Stream, *http.Response) {
		t.Helper()
		pr, pw := io.Pipe()
		req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+caddy.Addr()+"/chat?room=1", pr)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range h {
			req.Header[k] = v
		}
		req.Header.Set(":protocol", "websocket")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			t.Fatalf("extended CONNECT: %v", err)
		}
		s := &h2Stream{w: pw, r: resp.Body}
		t.Cleanup(func() { pw.Close(); resp.Body.Close() })
		return s, resp
	}

	t.Run("echo", func(t *testing.T) {
		s, resp := open(t, http.Header{"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Protocol": {"chat.v1, chat.v2"}})
		if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 2 {
			t.Fatalf("answer %s over HTTP/%d, want 200 over HTTP/2", resp.Status, resp.ProtoMajor)
		}
		if got := resp.Header.Get("Sec-Websocket-Protocol"); got != "chat.v2" {
			t.Errorf("subprotocol %q, want the backend's chat.v2", got)
		}
		if resp.Header.Get("Sec-Websocket-Accept") != "" || resp.Header.Get("Upgrade") != "" {
			t.Errorf("HTTP/1.1 upgrade headers leaked into the HTTP/2 answer: %v", resp.Header)
		}
		for _, size := range []int{5, 1020, 1024, 70_000, 1 << 20} {
			msg := make([]byte, size)
			rand.Read(msg)
			if err := s.writeFrame(websocket.BinaryMessage, msg); err != nil {
				t.Fatal(err)
			}
			op, got, err := s.readFrame()
			if err != nil || op != websocket.BinaryMessage || !bytes.Equal(got, msg) {
				t.Fatalf("echo of %d bytes: op %d, %d bytes, %v", size, op, len(got), err)
			}
		}
		r := backend.Requests()[len(backend.Requests())-1]
		if r.Method != http.MethodGet || r.URL.RequestURI() != "/chat?room=1" || r.Header.Get("X-Forwarded-Proto") != "https" || len(r.Header.Get("Sec-Websocket-Key")) != 24 {
			t.Errorf("backend saw %s %s, X-Forwarded-Proto %q, key %q", r.Method, r.URL.RequestURI(), r.Header.Get("X-Forwarded-Proto"), r.Header.Get("Sec-Websocket-Key"))
		}
		// Close from the client: the backend echoes the code.
		if err := s.writeFrame(websocket.CloseMessage, websocket.FormatCloseMessage(4001, "bye")); err != nil {
			t.Fatal(err)
		}
		op, payload, err := s.readFrame()
		if err != nil || op != websocket.CloseMessage || len(payload) < 2 || binary.BigEndian.Uint16(payload) != 4001 {
			t.Fatalf("close answer: op %d %q %v, want close 4001", op, payload, err)
		}
	})

	t.Run("wrong version", func(t *testing.T) {
		_, resp := open(t, http.Header{"Sec-Websocket-Version": {"8"}})
		if resp.StatusCode != http.StatusBadRequest || resp.Header.Get("Sec-Websocket-Version") != "13" {
			t.Fatalf("answer %s %v, want 400 with Sec-WebSocket-Version: 13", resp.Status, resp.Header)
		}
	})

	t.Run("counted and released", func(t *testing.T) {
		s, _ := open(t, http.Header{"Sec-Websocket-Version": {"13"}})
		if err := s.writeFrame(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.readFrame(); err != nil {
			t.Fatal(err)
		}
		if st, err := caddy.Backends(); err != nil || st.TotalLive != 1 {
			t.Fatalf("admin: %+v %v, want 1 live", st, err)
		}
		s.w.Close() // the client ends its stream
		if !harness.WaitFor(ctx, 5*time.Second, func() bool {
			st, err := caddy.Backends()
			return err == nil && st.TotalLive == 0
		}) {
			st, _ := caddy.Backends()
			t.Fatalf("after the client ended its stream: %+v, want 0 live", st)
		}
	})

	t.Run("survives a reload", func(t *testing.T) {
		s, _ := open(t, http.Header{"Sec-Websocket-Version": {"13"}})
		if err := s.writeFrame(websocket.TextMessage, []byte("before")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.readFrame(); err != nil {
			t.Fatal(err)
		}
		if err := caddy.Reload(site([]*harness.EchoBackend{backend}, "")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // past the harness's 1 s grace_period
		if err := s.writeFrame(websocket.TextMessage, []byte("after")); err != nil {
			t.Fatal(err)
		}
		if op, msg, err := s.readFrame(); err != nil || op != websocket.TextMessage || string(msg) != "after" {
			t.Fatalf("echo after a reload: op %d %q %v", op, msg, err)
		}
	})

	t.Run("backend dies", func(t *testing.T) {
		s, _ := open(t, http.Header{"Sec-Websocket-Version": {"13"}})
		if err := s.writeFrame(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.readFrame(); err != nil {
			t.Fatal(err)
		}
		backend.Kill()
		op, payload, err := s.readFrame()
		if err != nil || op != websocket.CloseMessage || len(payload) < 2 {
			t.Fatalf("after the backend died: op %d %q %v, want a close frame", op, payload, err)
		}
		if code := binary.BigEndian.Uint16(payload); code != websocket.CloseGoingAway && code != websocket.CloseInternalServerErr {
			t.Fatalf("close code %d, want 1001 or 1011", code)
		}
		if _, _, err := s.readFrame(); err == nil {
			t.Fatal("the stream goes on after the close frame")
		}
	})
}

// h2Stream speaks WebSocket frames (RFC 6455 section 5, client side: masked)
// over an HTTP/2 stream, as RFC 8441 has it.
type h2Stream struct {
	w io.WriteCloser
	r io.Reader
}

func (s *h2Stream) writeFrame(op int, payload []byte) error {
	var hdr []byte
	hdr = append(hdr, 0x80|byte(op))
	switch n := len(payload); {
	case n < 126:
		hdr = append(hdr, 0x80|byte(n))
	case n < 1<<16:
		hdr = append(hdr, 0x80|126, byte(n>>8), byte(n))
	default:
		hdr = append(hdr, 0x80|127)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(n))
	}
	var mask [4]byte
	rand.Read(mask[:])
	hdr = append(hdr, mask[:]...)
	masked := make([]byte, len(payload))
	for i, b := range payload {
		masked[i] = b ^ mask[i%4]
	}
	_, err := s.w.Write(append(hdr, masked...))
	return err
}

// readFrame reads one message of unmasked frames (the backend's), joining
// its fragments.
func (s *h2Stream) readFrame() (int, []byte, error) {
	var op int
	var msg []byte
	for {
		var h [2]byte
		if _, err := io.ReadFull(s.r, h[:]); err != nil {
			return 0, nil, err
		}
		if h[1]&0x80 != 0 {
			return 0, nil, fmt.Errorf("masked frame from the backend: %x", h)
		}
		if o := int(h[0] & 0x0f); o != 0 {
			op = o
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(s.r, b[:]); err != nil {
				return 0, nil, err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(s.r, b[:]); err != nil {
				return 0, nil, err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		payload := make([]byte, n)
		if _, err := io.ReadFull(s.r, payload); err != nil {
			return 0, nil, err
		}
		msg = append(msg, payload...)
		if h[0]&0x80 != 0 {
			return op, msg, nil
		}
	}
}
