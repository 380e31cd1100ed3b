package balancer

import (
	"bufio"
	"net"
	"net/http"
)

// clientTransport is what differs between the two ways a client asks for a
// WebSocket: an HTTP/1.1 upgrade, whose connection is hijacked and gets the
// 101 (transport_hijack.go), and an extended CONNECT, one stream of an
// HTTP/2 or HTTP/3 connection that gets 200 and lives only as long as its
// handler (transport_stream.go). The backend speaks HTTP/1.1 either way, so
// choosing, dialing, the handshake and relaying do not depend on it.
type clientTransport interface {
	// upstreamRequest is the HTTP/1.1 upgrade request the backend gets.
	upstreamRequest() *http.Request
	// open takes the client's side of the connection once the backend
	// has answered resp, a 101. A nil client means it cannot be relayed:
	// result is what ServeUpgrade returns (nil when the client may have
	// got part of an answer already), and the caller drops the backend.
	open(w http.ResponseWriter, u *Upstream, resp *http.Response) (client net.Conn, result error)
	// greet writes what must go out before relaying: any answer the
	// client has not got yet, and the bytes either side sent along with
	// its handshake (br holds the backend's), counted by rl's pipes. It
	// returns br to its pool. An error means the client cannot be
	// answered any more.
	greet(rl *relay, client, backend net.Conn, resp *http.Response, br *bufio.Reader) error
	// ended, if not nil, is called when the relay has finished; wait
	// returns when the handler may return.
	ended() func()
	wait()
}

// admit picks the transport r speaks and checks its request before any
// backend is touched, so that malformed handshakes cost nothing upstream.
func (p *Proxy) admit(r *http.Request) (clientTransport, *Error) {
	if IsExtendedConnect(r) {
		t, e := newStreamTransport(r)
		if e != nil {
			return nil, e
		}
		return t, nil
	}
	if e := checkUpgrade(r); e != nil {
		return nil, e
	}
	return &hijackTransport{r: r, opts: &p.opts}, nil
}
