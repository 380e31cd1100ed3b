package consultest

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
)

// httpError is an error answered with a status code and a plain-text body,
// like Consul's HTTPError.
type httpError struct {
	code int
	msg  string
}

func (e *httpError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &httpError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return &httpError{code: http.StatusNotFound, msg: fmt.Sprintf(format, args...)}
}

func serverError(format string, args ...any) error {
	return &httpError{code: http.StatusInternalServerError, msg: fmt.Sprintf(format, args...)}
}

// writeError answers err the way Consul's HTTP layer does: its own status
// code for HTTP errors, 500 with the message for anything else.
func writeError(w http.ResponseWriter, err error) {
	code := http.StatusInternalServerError
	var he *httpError
	if errors.As(err, &he) {
		code = he.code
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(code)
	_, _ = io.WriteString(w, err.Error())
}

// marshal encodes like a dev agent, which pretty-prints.
func marshal(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "", "    ")
	if err != nil {
		return nil, fmt.Errorf("encoding response: %w", err)
	}
	return append(b, '\n'), nil
}

func writeBody(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func writeJSON(w http.ResponseWriter, v any) error {
	body, err := marshal(v)
	if err != nil {
		return err
	}
	writeBody(w, body)
	return nil
}

// setQueryMeta sets the headers Consul puts on every catalog and health read.
// Index 0 is answered as 1, as Consul does, because ?index=0 never blocks and
// would turn a watcher into a busy loop.
func setQueryMeta(w http.ResponseWriter, q query, index uint64, filtered bool) {
	if index == 0 {
		index = 1
	}
	h := w.Header()
	h.Set("X-Consul-Index", strconv.FormatUint(index, 10))
	h.Set("X-Consul-KnownLeader", "true")
	h.Set("X-Consul-LastContact", "0")
	h.Set("X-Consul-Effective-Consistency", q.consistency)
	h.Set("X-Consul-Query-Backend", "blocking-query")
	if filtered {
		h.Set("X-Consul-Results-Filtered-By-ACLs", "true")
	}
}
