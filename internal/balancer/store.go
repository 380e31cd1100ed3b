package balancer

import "sync"

// BackendStore hands out the shared state of backends by dial address and
// takes it back when no longer used. Acquire and Release are reference
// counted: state lives while anyone holds it, so a connection that outlives
// the handler that opened it keeps its backend's count right, and a handler
// provisioned by a config reload finds the counts of the old one.
//
// caddymodule backs it with a caddy.UsagePool; NewBackendStore serves
// programs without Caddy.
type BackendStore interface {
	Acquire(addr string) *Backend
	Release(addr string)
}

// NewBackendStore returns an in-memory, reference-counted BackendStore.
func NewBackendStore() BackendStore { return &memStore{m: make(map[string]*storeEntry)} }

type storeEntry struct {
	b    *Backend
	refs int
}

type memStore struct {
	mu sync.Mutex
	m  map[string]*storeEntry
}

func (s *memStore) Acquire(addr string) *Backend {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[addr]
	if e == nil {
		e = &storeEntry{b: NewBackend(addr)}
		s.m[addr] = e
	}
	e.refs++
	return e.b
}

func (s *memStore) Release(addr string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[addr]; e != nil {
		if e.refs--; e.refs <= 0 {
			delete(s.m, addr)
		}
	}
}
