package consultest

import (
	"fmt"
	"net/http"
	"strings"
)

// authorizer is what a request's token may do. The double knows three: no
// ACLs, the one management token, and Consul's anonymous token under a
// default-deny policy.
type authorizer int

const (
	allowAll   authorizer = iota // ACLs disabled
	management                   // Options.ACLToken
	anonymous                    // no token while ACLs are on: may do nothing
)

// errACLNotFound is Consul's answer to a token it does not know.
var errACLNotFound = &httpError{code: http.StatusForbidden, msg: "ACL not found"}

// resolveToken finds the request's token where Consul looks for it: ?token=,
// then X-Consul-Token, then "Authorization: Bearer".
func (a *Agent) resolveToken(r *http.Request) (authorizer, error) {
	if a.opts.ACLToken == "" {
		return allowAll, nil
	}
	switch token := requestToken(r); token {
	case "":
		return anonymous, nil
	case a.opts.ACLToken:
		return management, nil
	default:
		return anonymous, errACLNotFound
	}
}

func requestToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	if t := r.Header.Get("X-Consul-Token"); t != "" {
		return t
	}
	scheme, value, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if ok && strings.EqualFold(scheme, "bearer") {
		if fields := strings.Fields(value); len(fields) > 0 {
			return fields[0]
		}
	}
	return ""
}

// allows reports whether the token may do anything; the management token and
// disabled ACLs may do everything, the anonymous token nothing.
func (z authorizer) allows() bool { return z != anonymous }

// vet returns Consul's permission-denied error when the anonymous token asks
// for permission (like "service:write") on name.
func (z authorizer) vet(permission, name string) error {
	if z.allows() {
		return nil
	}
	return &httpError{
		code: http.StatusForbidden,
		msg: fmt.Sprintf("Permission denied: anonymous token lacks permission '%s' on %q. "+
			"The anonymous token is used implicitly when a request does not specify a token.", permission, name),
	}
}

// aclPolicyHeader is X-Consul-Default-ACL-Policy as Consul sets it.
func (a *Agent) aclPolicyHeader() string {
	if a.opts.ACLToken == "" {
		return "allow"
	}
	return "deny"
}
