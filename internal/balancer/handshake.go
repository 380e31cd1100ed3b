package balancer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
)

// handshake dials the backend and exchanges the upgrade request and answer.
func (p *Proxy) handshake(ctx context.Context, u *Upstream, r *http.Request, fwd ForwardedFor) (conn net.Conn, resp *http.Response, br *bufio.Reader, err error) {
	dialCtx, cancel := context.WithTimeout(ctx, p.opts.DialTimeout)
	conn, err = p.opts.Dialer.DialContext(dialCtx, "tcp", u.URL.Host)
	cancel()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("dialing backend %s: %w", u.Addr(), err)
	}
	defer func() {
		if err != nil {
			conn.Close()
		}
	}()
	// The request context is watched during the handshake only: once
	// relaying, the connection must outlive this request (and config
	// reloads).
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	conn.SetDeadline(p.opts.Now().Add(p.opts.HandshakeTimeout))
	if u.URL.Scheme == "wss" {
		conn, err = p.tlsHandshake(ctx, conn, u)
		if err != nil {
			return conn, nil, nil, err
		}
	}
	if err = writeUpgradeRequest(conn, r, u, fwd, p.opts.UpstreamHeaders); err != nil {
		return conn, nil, nil, fmt.Errorf("writing handshake to backend %s: %w", u.Addr(), err)
	}
	resp, br, err = readUpgradeResponse(conn, r)
	if err != nil {
		return conn, nil, nil, fmt.Errorf("backend %s: %w", u.Addr(), err)
	}
	if !stop() {
		// The client left just as the answer came: treat as a failed
		// handshake on the client's side.
		putReader(br)
		return conn, nil, nil, ctx.Err()
	}
	conn.SetDeadline(time.Time{})
	return conn, resp, br, nil
}

// hopHeaders are meaningful only for one connection (RFC 9110 section
// 7.6.1): the list of Caddy's reverse proxy. Headers that a message's
// Connection header names are hop-by-hop too (see isHopHeader). Connection
// and Upgrade are written again explicitly for the upstream handshake and
// the 101; the Sec-WebSocket-* headers are end-to-end and pass.
var hopHeaders = map[string]bool{
	"Alt-Svc":             true,
	"Connection":          true,
	"Proxy-Connection":    true,
	"Keep-Alive":          true,
	"Proxy-Authenticate":  true,
	"Proxy-Authorization": true,
	"Te":                  true,
	"Trailer":             true,
	"Transfer-Encoding":   true,
	"Upgrade":             true,
}

// isHopHeader reports whether the header name is hop-by-hop in a message
// whose Connection header has the values conn: a standard one, or one that
// Connection names (RFC 9110 section 7.6.1; without this, a client could
// send the backend anything it names there, and a backend could send the
// client anything).
func isHopHeader(conn []string, name string) bool {
	return hopHeaders[name] || httpguts.HeaderValuesContainsToken(conn, name)
}

// removeHopHeaders deletes the hop-by-hop headers from h, as Caddy's
// reverse proxy does before its header operations run.
func removeHopHeaders(h http.Header) {
	for _, v := range h["Connection"] {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if t = strings.TrimSpace(t); t != "" {
				h.Del(t)
			}
		}
	}
	for name := range hopHeaders {
		delete(h, name)
	}
}

// HeaderEditor edits the headers of the upgrade request sent to backend u
// for the client's request r (ProxyOptions.UpstreamHeaders).
type HeaderEditor func(r *http.Request, u *Upstream, h http.Header)

// ResponseEditor edits the headers of backend u's answer to the upgrade r,
// before the client gets it (ProxyOptions.DownstreamHeaders).
type ResponseEditor func(r *http.Request, u *Upstream, resp *http.Response)

// ForwardedFor describes how the X-Forwarded-* headers are set upstream.
type ForwardedFor struct {
	// ClientIP is the address to record for the client.
	ClientIP string
	// Trusted means the request came through a trusted proxy, so the
	// X-Forwarded-* headers it sent are kept and extended, not replaced.
	Trusted bool
}

var reqBufPool = sync.Pool{New: func() any { b := make([]byte, 0, 1024); return &b }}

// writeUpgradeRequest writes the handshake to the backend in one write: the
// client's request with its path joined to the backend's prefix, its
// end-to-end headers, and X-Forwarded-For/-Proto/-Host. Without edit, the
// headers go straight from r to the buffer; with edit (header_up), they are
// copied into a map for it first.
func writeUpgradeRequest(conn net.Conn, r *http.Request, u *Upstream, fwd ForwardedFor, edit HeaderEditor) error {
	bp := reqBufPool.Get().(*[]byte)
	b := (*bp)[:0]
	defer func() { *bp = b[:0]; reqBufPool.Put(bp) }()

	host, hdr := r.Host, http.Header(nil)
	if edit != nil {
		host, hdr = editedHeader(r, u, fwd, edit)
	}
	b = append(b, "GET "...)
	b = appendTargetURI(b, u, r)
	b = append(b, " HTTP/1.1\r\n"...)
	b = appendHeader(b, "Host", host)
	b = append(b, "Connection: Upgrade\r\nUpgrade: websocket\r\n"...)
	if hdr != nil {
		for name, values := range hdr {
			// Names may come from placeholders: a bad one is dropped
			// rather than let split the request.
			if hopHeaders[name] || !httpguts.ValidHeaderFieldName(name) {
				continue
			}
			for _, v := range values {
				b = appendHeader(b, name, v)
			}
		}
	} else {
		connection := r.Header["Connection"]
		for name, values := range r.Header {
			if isHopHeader(connection, name) || isForwardedHeader(name) {
				continue
			}
			for _, v := range values {
				b = appendHeader(b, name, v)
			}
		}
		xff, proto, fhost := forwardedValues(r, fwd)
		if xff != "" {
			b = appendHeader(b, "X-Forwarded-For", xff)
		}
		b = appendHeader(b, "X-Forwarded-Proto", proto)
		b = appendHeader(b, "X-Forwarded-Host", fhost)
	}
	b = append(b, "\r\n"...)
	_, err := conn.Write(b)
	return err
}

// editedHeader returns the Host and headers of the upstream request after
// edit: the client's end-to-end headers (copied: edits must not reach r,
// which a retry on another backend reads again) and X-Forwarded-*, as
// writeUpgradeRequest sends them without edit. Host is in the map for edit
// to change, as with Caddy's header_up; deleted, it becomes the backend's
// host:port.
func editedHeader(r *http.Request, u *Upstream, fwd ForwardedFor, edit HeaderEditor) (string, http.Header) {
	connection := r.Header["Connection"]
	hdr := make(http.Header, len(r.Header)+4)
	for name, values := range r.Header {
		if !isHopHeader(connection, name) && !isForwardedHeader(name) {
			hdr[name] = slices.Clone(values)
		}
	}
	xff, proto, fhost := forwardedValues(r, fwd)
	if xff != "" {
		hdr["X-Forwarded-For"] = []string{xff}
	}
	hdr["X-Forwarded-Proto"] = []string{proto}
	hdr["X-Forwarded-Host"] = []string{fhost}
	hdr["Host"] = []string{r.Host}
	edit(r, u, hdr)
	host := u.URL.Host
	if hs := hdr["Host"]; len(hs) > 0 && hs[len(hs)-1] != "" {
		host = hs[len(hs)-1]
	}
	delete(hdr, "Host")
	return host, hdr
}

func isForwardedHeader(name string) bool {
	return name == "X-Forwarded-For" || name == "X-Forwarded-Proto" || name == "X-Forwarded-Host"
}

// forwardedValues are the X-Forwarded-For (empty: none), -Proto and -Host
// the backend gets.
func forwardedValues(r *http.Request, fwd ForwardedFor) (xff, proto, host string) {
	xff = fwd.ClientIP
	if prior := r.Header.Values("X-Forwarded-For"); fwd.Trusted && len(prior) > 0 {
		xff = strings.Join(prior, ", ") + ", " + fwd.ClientIP
	}
	proto = "http"
	if r.TLS != nil {
		proto = "https"
	}
	host = r.Host
	if fwd.Trusted {
		if p := r.Header.Get("X-Forwarded-Proto"); p != "" {
			proto = p
		}
		if h := r.Header.Get("X-Forwarded-Host"); h != "" {
			host = h
		}
	}
	return xff, proto, host
}

// appendHeader writes one header line, dropping CR and LF from the value so
// that nothing the client sent can split the upstream request.
func appendHeader(b []byte, name, value string) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	for i := 0; i < len(value); i++ {
		if c := value[i]; c != '\r' && c != '\n' {
			b = append(b, c)
		}
	}
	return append(b, "\r\n"...)
}

// appendTargetURI joins the backend's path prefix and query with the
// request's, like net/http/httputil's single-host proxy.
func appendTargetURI(b []byte, u *Upstream, r *http.Request) []byte {
	prefix, path := u.URL.EscapedPath(), r.URL.EscapedPath()
	switch {
	case prefix == "" || prefix == "/":
		if path == "" {
			path = "/"
		}
		b = append(b, path...)
	case strings.HasSuffix(prefix, "/") && strings.HasPrefix(path, "/"):
		b = append(b, prefix...)
		b = append(b, path[1:]...)
	case !strings.HasSuffix(prefix, "/") && !strings.HasPrefix(path, "/") && path != "":
		b = append(b, prefix...)
		b = append(b, '/')
		b = append(b, path...)
	default:
		b = append(b, prefix...)
		b = append(b, path...)
	}
	q1, q2 := u.URL.RawQuery, r.URL.RawQuery
	if q1 != "" || q2 != "" {
		b = append(b, '?')
		b = append(b, q1...)
		if q1 != "" && q2 != "" {
			b = append(b, '&')
		}
		b = append(b, q2...)
	}
	return b
}

var brPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}

// putReader returns br to brPool, holding no connection.
func putReader(br *bufio.Reader) {
	br.Reset(nil)
	brPool.Put(br)
}

// errBadHandshake marks answers that are not HTTP at all: the backend is
// broken, not refusing, so it is marked down and another one is tried.
var errBadHandshake = errors.New("malformed handshake response")

// readUpgradeResponse reads the backend's answer. The returned reader may
// hold bytes the backend sent after its headers (the first frames); the
// caller forwards them and returns the reader to brPool.
func readUpgradeResponse(conn net.Conn, r *http.Request) (*http.Response, *bufio.Reader, error) {
	br := brPool.Get().(*bufio.Reader)
	br.Reset(conn)
	resp, err := http.ReadResponse(br, r)
	if err != nil {
		br.Reset(nil)
		brPool.Put(br)
		var ne net.Error
		if errors.As(err, &ne) {
			return nil, nil, fmt.Errorf("reading handshake response: %w", err)
		}
		return nil, nil, fmt.Errorf("%w: %w", errBadHandshake, err)
	}
	return resp, br, nil
}

// appendResponseHead serializes the backend's 101 answer for the client, as
// the backend wrote it (its protocol and extension choices are the
// client's) minus hop-by-hop headers, with Connection: Upgrade and the
// backend's Upgrade, as Caddy's reverse proxy writes a 101.
func appendResponseHead(b []byte, resp *http.Response) []byte {
	b = append(b, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"...)
	for _, v := range resp.Header["Upgrade"] {
		b = appendHeader(b, "Upgrade", v)
	}
	connection := resp.Header["Connection"]
	for name, values := range resp.Header {
		if isHopHeader(connection, name) || !httpguts.ValidHeaderFieldName(name) {
			continue
		}
		for _, v := range values {
			b = appendHeader(b, name, v)
		}
	}
	return append(b, "\r\n"...)
}

// editResponse runs edit over the backend's answer to r with its hop-by-hop
// headers removed first, as Caddy's reverse proxy runs header_down; the
// Upgrade of a 101 is kept, being the answer itself.
func editResponse(r *http.Request, u *Upstream, resp *http.Response, edit ResponseEditor) {
	upgrade := resp.Header["Upgrade"]
	removeHopHeaders(resp.Header)
	edit(r, u, resp)
	if resp.StatusCode == http.StatusSwitchingProtocols && upgrade != nil {
		resp.Header["Upgrade"] = upgrade
	}
}
