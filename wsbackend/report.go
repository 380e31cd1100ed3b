package wsbackend

// The load-report protocol: how a backend tells every balancer, through
// Consul, where it is and how loaded it is. Any backend in any language can
// follow it with Consul's HTTP API alone; the Go library in this package
// does it for Go backends.
//
// A backend registers a service (one name shared by all backends) with
// Address and Port set to where balancers in proxy mode dial it, and these
// service meta keys (values are strings, as Consul requires):
const (
	// MetaConnections is the backend's live WebSocket connection count, a
	// decimal integer. Re-registering the service updates it at once (each
	// re-registration is a Raft write that wakes every watcher, so backends
	// publish in coarse steps: see the library's Reporter).
	MetaConnections = "ws_connections"
	// MetaCountedAt is when the backend read the count in MetaConnections,
	// in Unix milliseconds by its clock. Balancers match the report with
	// their own count at that moment, so that connections opened while
	// the report travelled are counted once. Optional: without it a
	// balancer matches the report with its count on arrival.
	MetaCountedAt = "ws_counted_at"
	// MetaCapacity is how many connections the backend accepts at most, a
	// decimal integer; absent or 0 means unlimited. It caps the backend's
	// load like max_conns.
	MetaCapacity = "ws_capacity"
	// MetaURL is the backend's public WebSocket URL (ws:// or wss://, with
	// path), where assign mode sends clients. If absent, clients are sent to
	// ws://Address:Port/.
	MetaURL = "ws_url"
	// MetaDraining, when "true", means the backend takes no new connections
	// or assignments but keeps the ones it has.
	MetaDraining = "ws_draining"
)
