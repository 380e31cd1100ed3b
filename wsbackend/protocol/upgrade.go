package protocol

import (
	"net/http"
	"net/textproto"
	"strings"
)

// IsUpgrade reports whether r asks for a WebSocket upgrade at all (RFC 6455
// section 4.2.1: GET, Connection containing "upgrade", Upgrade containing
// "websocket"). Requests that do not may be served by another handler.
// The balancer and the backend library's Counter count the same requests
// as upgrades by this one definition.
func IsUpgrade(r *http.Request) bool {
	return r.ProtoMajor == 1 &&
		headerHasToken(r.Header, "Connection", "upgrade") &&
		headerHasToken(r.Header, "Upgrade", "websocket")
}

// headerHasToken reports whether a comma-separated header contains token,
// case-insensitively.
func headerHasToken(h http.Header, name, token string) bool {
	return tokenListHas(h[textproto.CanonicalMIMEHeaderKey(name)], token)
}

// tokenListHas reports whether the comma-separated values contain token,
// case-insensitively. It allocates nothing: it runs for every request a
// balancer or a counting backend serves.
func tokenListHas(values []string, token string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}
