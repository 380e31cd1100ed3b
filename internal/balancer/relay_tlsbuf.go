package balancer

import (
	"bytes"
	"crypto/tls"
	"reflect"
	"unsafe"
)

// A relay that waits for a TLS connection's socket to become readable before
// reading it must first know that the tls.Conn holds nothing already read:
// records pulled off the socket along with the previous one, or decrypted
// bytes a short read left behind. The socket says nothing of those, and
// crypto/tls has no method that does. Without one, the choice is a read with
// a past deadline after every message (two deadline changes and a failed
// read: about 0.5 µs and two allocations per message, measured) or this: the
// lengths of the two buffers, read through the offsets reflect reports for
// the fields, once checked to have the expected types. A Go release that
// renames or retypes them turns tlsPeek off, and TLS connections go back to
// the goroutine pair (TestTLSBufferedPeek fails, so that it is noticed).
var tlsPeek = func() (p struct {
	ok           bool
	input, rawIn uintptr
}) {
	t := reflect.TypeFor[tls.Conn]()
	in, ok1 := t.FieldByName("input")
	raw, ok2 := t.FieldByName("rawInput")
	if !ok1 || !ok2 || in.Type != reflect.TypeFor[bytes.Reader]() || raw.Type != reflect.TypeFor[bytes.Buffer]() {
		return p
	}
	p.ok, p.input, p.rawIn = true, in.Offset, raw.Offset
	return p
}()

// tlsBuffered reports whether a Read of c would return bytes without
// reading its socket first (or needs only the rest of a record begun
// there). Only c's one reader may call it, between its Reads: the buffers
// belong to the reading side.
func tlsBuffered(c *tls.Conn) bool {
	p := unsafe.Pointer(c)
	in := (*bytes.Reader)(unsafe.Add(p, tlsPeek.input))
	raw := (*bytes.Buffer)(unsafe.Add(p, tlsPeek.rawIn))
	return in.Len() > 0 || raw.Len() > 0
}
