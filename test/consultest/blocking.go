package consultest

import (
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Blocking-query limits from Consul's documentation.
const (
	defaultQueryWait = 5 * time.Minute
	maxQueryWait     = 10 * time.Minute
	jitterFraction   = 16 // Consul adds up to wait/16 to spread wake-ups
)

// query holds the options Consul reads on catalog and health endpoints.
type query struct {
	minIndex    uint64
	wait        time.Duration
	consistency string
	authz       authorizer
}

// parseQuery reads ?dc, ?index, ?wait and the consistency flags, then the
// token, in the order Consul checks them.
func (a *Agent) parseQuery(r *http.Request) (query, error) {
	params := r.URL.Query()
	q := query{wait: defaultQueryWait, consistency: "leader"}

	if s := params.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			return q, badRequest("Invalid wait time")
		}
		q.wait = d
	}
	if s := params.Get("index"); s != "" {
		idx, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return q, badRequest("Invalid index")
		}
		q.minIndex = idx
	}
	switch {
	case q.wait > maxQueryWait:
		q.wait = maxQueryWait
	case q.wait <= 0:
		q.wait = defaultQueryWait
	}

	_, stale := params["stale"]
	_, consistent := params["consistent"]
	_, cached := params["cached"]
	switch {
	case stale && consistent:
		return q, badRequest("Cannot specify ?stale with ?consistent, conflicting semantics.")
	case cached && consistent:
		return q, badRequest("Cannot specify ?cached with ?consistent, conflicting semantics.")
	case stale:
		q.consistency = "stale"
	case consistent:
		q.consistency = "consistent"
	}
	if params.Get("filter") != "" {
		return q, badRequest("consultest: ?filter expressions are not implemented by this test double")
	}

	authz, err := a.resolveToken(r)
	if err != nil {
		return q, err
	}
	q.authz = authz

	if dc := params.Get("dc"); dc != "" && dc != a.opts.Datacenter {
		return q, serverError("No path to datacenter")
	}
	return q, nil
}

// readFunc runs a query against the catalog with the agent's lock held and
// returns its index, its result and whether ACLs filtered anything out.
type readFunc func() (index uint64, result any, filtered bool)

// blockingQuery answers a read the way Consul's blocking queries do: at once
// when ?index is absent or 0, or as soon as the result's index passes it, or
// with the current result when the wait (plus jitter) runs out.
func (a *Agent) blockingQuery(w http.ResponseWriter, r *http.Request, q query, read readFunc) error {
	var timeout <-chan time.Time
	if q.minIndex > 0 {
		wait := q.wait + rand.N(q.wait/jitterFraction+1)
		t := time.NewTimer(wait)
		defer t.Stop()
		timeout = t.C
	}
	for {
		a.mu.Lock()
		idx, result, filtered := read()
		if q.minIndex == 0 || idx > q.minIndex {
			body, err := marshal(result) // under the lock: result may share catalog data
			a.mu.Unlock()
			if err != nil {
				return err
			}
			setQueryMeta(w, q, idx, filtered)
			writeBody(w, body)
			return nil
		}
		changed := a.changed
		a.mu.Unlock()

		select {
		case <-changed:
		case <-timeout:
			q.minIndex = 0 // answer with whatever is there now
		case <-r.Context().Done():
			return nil // the client left or the listener went down
		case <-a.quit:
			return serverError("consultest: agent closed")
		}
	}
}

// boolParam reads a flag such as ?passing the way Consul does: present
// without a value means true.
func boolParam(params url.Values, name string) (bool, error) {
	values, ok := params[name]
	if !ok {
		return false, nil
	}
	if len(values) == 0 || values[0] == "" {
		return true, nil
	}
	return strconv.ParseBool(values[0])
}
