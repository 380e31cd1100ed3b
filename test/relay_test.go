package test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
)

// The relay is faithful: messages of every kind and size,
// fragmentation, subprotocols, close codes both ways, permessage-deflate and
// the forwarded request.
func TestRelayFaithful(t *testing.T) {
	t.Parallel()
	// Plain TCP clients are relayed by the event loop, TLS clients (an
	// HTTPS site) by the goroutine pair, which waits for an idle TLS client
	// holding only a small buffer: both must pass every case.
	for _, tls := range []bool{false, true} {
		name := "ws"
		if tls {
			name = "wss"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			relayFaithful(t, tls)
		})
	}
}

func relayFaithful(t *testing.T, tls bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	closer := harness.StartEcho(t, harness.EchoOptions{CloseWith: &harness.CloseInfo{Code: 4001, Text: "backend says bye"}})
	plain := harness.StartEcho(t, harness.EchoOptions{Subprotocols: []string{"chat.v2", "chat.v1"}})
	start := harness.StartCaddy
	if tls {
		start = harness.StartCaddyTLS
	}
	caddy := start(t, "\thandle /close* {\n"+site([]*harness.EchoBackend{closer}, "")+"\t}\n"+
		"\thandle {\n"+site([]*harness.EchoBackend{plain}, "")+"\t}\n")

	dial := func(t *testing.T, d *websocket.Dialer, path string, h http.Header) (*websocket.Conn, *http.Response) {
		t.Helper()
		c, resp, err := d.DialContext(ctx, caddy.URL(path), h)
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		c.SetReadLimit(64 << 20)
		t.Cleanup(func() { c.Close() })
		return c, resp
	}

	for _, tc := range []struct {
		name     string
		typ      int
		size     int
		fragment int // write in frames of this size (0: one frame)
		compress bool
	}{
		{"text", websocket.TextMessage, 11, 0, false},
		{"binary", websocket.BinaryMessage, 300, 0, false},
		{"1MiB", websocket.BinaryMessage, 1 << 20, 0, false},
		{"16MiB", websocket.BinaryMessage, 16 << 20, 0, false},
		{"fragmented", websocket.BinaryMessage, 100_000, 1000, false},
		{"fragmented text", websocket.TextMessage, 10_000, 7, false},
		{"deflate", websocket.TextMessage, 200_000, 0, true},
		// Around the TLS relay's small read buffer (1 KB): payloads whose
		// frames end just short of it, on it and just past it.
		{"1022 B", websocket.BinaryMessage, 1022 - 4, 0, false},
		{"1024 B", websocket.BinaryMessage, 1024 - 4, 0, false},
		{"1026 B", websocket.BinaryMessage, 1026 - 4, 0, false},
		{"1 KB frames", websocket.BinaryMessage, 64 << 10, 1020, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := *harness.Dialer
			d.EnableCompression = tc.compress
			if tc.fragment > 0 {
				// gorilla flushes a frame each time its write buffer
				// fills, so the buffer size is the fragment size.
				d.WriteBufferSize = tc.fragment
			}
			c, resp := dial(t, &d, "/echo", nil)
			ext := resp.Header.Get("Sec-WebSocket-Extensions")
			if tc.compress != strings.Contains(ext, "permessage-deflate") {
				t.Fatalf("Sec-WebSocket-Extensions = %q with compression %v", ext, tc.compress)
			}
			c.EnableWriteCompression(tc.compress)
			msg := make([]byte, tc.size)
			if tc.typ == websocket.TextMessage {
				for i := range msg {
					msg[i] = 'a' + byte(i%26)
				}
			} else {
				rand.Read(msg)
			}
			// Read the echo while writing: the backend echoes as it reads,
			// so a large message would fill every buffer on the way if the
			// client only read after writing it all.
			type echo struct {
				typ int
				got []byte
				err error
			}
			echoed := make(chan echo, 1)
			go func() {
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				typ, r, err := c.NextReader()
				if err != nil {
					echoed <- echo{err: err}
					return
				}
				got, err := io.ReadAll(r)
				echoed <- echo{typ, got, err}
			}()
			w, err := c.NextWriter(tc.typ)
			if err != nil {
				t.Fatal(err)
			}
			if tc.fragment > 0 {
				for off := 0; off < len(msg); off += tc.fragment {
					end := min(off+tc.fragment, len(msg))
					if _, err := w.Write(msg[off:end]); err != nil {
						t.Fatal(err)
					}
				}
			} else if _, err := w.Write(msg); err != nil {
				t.Fatal(err)
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			e := <-echoed
			typ, got := e.typ, e.got
			if e.err != nil {
				t.Fatal(e.err)
			}
			if typ != tc.typ || !bytes.Equal(got, msg) {
				t.Fatalf("echo differs: type %d/%d, %d/%d bytes", typ, tc.typ, len(got), len(msg))
			}
		})
	}

	t.Run("subprotocol", func(t *testing.T) {
		d := *harness.Dialer
		d.Subprotocols = []string{"chat.v1", "chat.v2"}
		c, _ := dial(t, &d, "/echo", nil)
		// The backend prefers chat.v2; the client must see the backend's
		// choice, not one the proxy made.
		if got := c.Subprotocol(); got != "chat.v2" {
			t.Fatalf("subprotocol %q, want the backend's choice chat.v2", got)
		}
	})

	t.Run("ping pong", func(t *testing.T) {
		c, _ := dial(t, harness.Dialer, "/echo", nil)
		pong := make(chan string, 1)
		c.SetPongHandler(func(data string) error { pong <- data; return nil })
		if err := c.WriteControl(websocket.PingMessage, []byte("are you there"), time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		go func() { c.SetReadDeadline(time.Now().Add(5 * time.Second)); c.ReadMessage() }()
		select {
		case got := <-pong:
			if got != "are you there" {
				t.Fatalf("pong %q", got)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no pong through the proxy")
		}
	})

	t.Run("close code from client", func(t *testing.T) {
		c, _ := dial(t, harness.Dialer, "/echo", nil)
		msg := websocket.FormatCloseMessage(4001, "client says bye")
		if err := c.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, _, err := c.ReadMessage()
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4001 || ce.Text != "client says bye" {
			t.Fatalf("client got %v, want the backend's echo of close 4001", err)
		}
		found := false
		for _, ci := range plain.Closes() {
			found = found || (ci.Code == 4001 && ci.Text == "client says bye")
		}
		if !found {
			t.Fatalf("backend got closes %v, want 4001 \"client says bye\"", plain.Closes())
		}
	})

	t.Run("close code from backend", func(t *testing.T) {
		c, _ := dial(t, harness.Dialer, "/close", nil)
		if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, _, err := c.ReadMessage(); err != nil {
			t.Fatal(err)
		}
		_, _, err := c.ReadMessage()
		if ce, ok := err.(*websocket.CloseError); !ok || ce.Code != 4001 || ce.Text != "backend says bye" {
			t.Fatalf("client got %v, want close 4001 \"backend says bye\"", err)
		}
	})

	t.Run("forwarded request", func(t *testing.T) {
		proto := "http"
		if tls {
			proto = "https"
		}
		h := http.Header{
			"Origin":        {"https://app.example"},
			"Cookie":        {"session=abc"},
			"Authorization": {"Bearer xyz"},
		}
		c, _ := dial(t, harness.Dialer, "/echo/room?x=1&y=2", h)
		c.Close()
		reqs := plain.Requests()
		r := reqs[len(reqs)-1]
		for name, want := range map[string]string{
			"Origin":            "https://app.example",
			"Cookie":            "session=abc",
			"Authorization":     "Bearer xyz",
			"X-Forwarded-For":   "127.0.0.1",
			"X-Forwarded-Proto": proto,
			"X-Forwarded-Host":  caddy.Addr(),
		} {
			if got := r.Header.Get(name); got != want {
				t.Errorf("backend saw %s = %q, want %q", name, got, want)
			}
		}
		if r.URL.RequestURI() != "/echo/room?x=1&y=2" || r.Host != caddy.Addr() {
			t.Errorf("backend saw %s %s, want /echo/room?x=1&y=2 on %s", r.Host, r.URL.RequestURI(), caddy.Addr())
		}
	})
}
