package consultest

import (
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
)

// handlerFunc is an endpoint; a returned error is answered by writeError.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// route matches a path like net/http.ServeMux (and so Consul): a pattern
// ending in "/" matches every path under it, any other pattern only itself.
type route struct {
	pattern string
	methods []string
	handle  handlerFunc
}

func (rt route) matches(path string) bool {
	if strings.HasSuffix(rt.pattern, "/") {
		return strings.HasPrefix(path, rt.pattern)
	}
	return path == rt.pattern
}

func (a *Agent) routeTable() []route {
	get, put := []string{http.MethodGet}, []string{http.MethodPut}
	return []route{
		{"/v1/agent/service/register", put, a.handleServiceRegister},
		{"/v1/agent/service/deregister/", put, a.handleServiceDeregister},
		{"/v1/agent/service/maintenance/", put, a.handleServiceMaintenance},
		{"/v1/agent/check/update/", put, a.handleCheckUpdate},
		{"/v1/agent/check/pass/", put, a.handleCheckStatus("/v1/agent/check/pass/", api.HealthPassing)},
		{"/v1/agent/check/warn/", put, a.handleCheckStatus("/v1/agent/check/warn/", api.HealthWarning)},
		{"/v1/agent/check/fail/", put, a.handleCheckStatus("/v1/agent/check/fail/", api.HealthCritical)},
		{"/v1/agent/services", get, a.handleAgentServices},
		{"/v1/agent/checks", get, a.handleAgentChecks},
		{"/v1/agent/self", get, a.handleAgentSelf},
		{"/v1/health/service/", get, a.handleHealthService},
		{"/v1/catalog/services", get, a.handleCatalogServices},
		{"/v1/catalog/service/", get, a.handleCatalogService},
		{"/v1/status/leader", get, a.handleStatusLeader},
	}
}

// serveHTTP is the agent's HTTP API. It counts the request, marks the
// response as coming from a test double and dispatches like Consul: 404 for
// unknown paths, 405 with an Allow header for wrong methods.
func (a *Agent) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if !a.enter() {
		http.Error(w, ErrClosed.Error(), http.StatusServiceUnavailable)
		return
	}
	defer a.inflight.Done()
	a.countRequest(r.URL.Path)
	w.Header().Set(TestDoubleHeader, TestDoubleNotice)

	var rt *route
	for _, candidate := range a.routes {
		if candidate.matches(r.URL.Path) {
			rt = &candidate
			break
		}
	}
	if rt == nil {
		a.serveIndex(w, r)
		return
	}

	w.Header().Set("X-Consul-Default-ACL-Policy", a.aclPolicyHeader())
	if r.Method == http.MethodOptions {
		w.Header().Set("Allow", strings.Join(append([]string{http.MethodOptions}, rt.methods...), ","))
		return
	}
	if !slices.Contains(rt.methods, r.Method) {
		w.Header().Set("Allow", strings.Join(append([]string{http.MethodOptions}, rt.methods...), ","))
		writeError(w, &httpError{code: http.StatusMethodNotAllowed, msg: fmt.Sprintf("method %s not allowed", r.Method)})
		return
	}
	if err := rt.handle(w, r); err != nil {
		a.logger.Debug("request error",
			zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		writeError(w, err)
	}
}

// serveIndex answers paths no endpoint matches, with Consul's texts and a
// hint that the double implements only part of the API.
func (a *Agent) serveIndex(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if r.URL.Path == "/" {
		_, _ = io.WriteString(w, TestDoubleNotice+"\n")
		return
	}
	w.WriteHeader(http.StatusNotFound)
	if strings.Contains(r.URL.Path, "/v1/") {
		_, _ = io.WriteString(w, "Invalid URL path: not a recognized HTTP API endpoint "+
			"(consultest implements only part of Consul's HTTP API)\n")
		return
	}
	_, _ = io.WriteString(w, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n")
}
