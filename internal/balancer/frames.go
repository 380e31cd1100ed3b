package balancer

import (
	"encoding/binary"
	"math/rand/v2"
)

// frameTracker follows the frame boundaries of one direction of a WebSocket
// byte stream without decoding payloads: it reads each frame header and then
// skips the payload by count. That is enough to know whether the stream
// stopped between frames (so a close frame may be injected) and whether a
// close frame already went by (so none must be).
type frameTracker struct {
	hdr       [14]byte // a header split across reads is gathered here
	hdrLen    int
	remaining uint64 // payload bytes of the current frame still to come
	closeSeen bool
	broken    bool // the stream is not WebSocket framing; stop tracking
}

// atBoundary reports whether the bytes so far end exactly after a frame.
func (t *frameTracker) atBoundary() bool {
	return !t.broken && t.hdrLen == 0 && t.remaining == 0
}

// observe advances over p.
func (t *frameTracker) observe(p []byte) {
	for len(p) > 0 && !t.broken {
		if t.remaining > 0 {
			n := uint64(len(p))
			if n > t.remaining {
				n = t.remaining
			}
			t.remaining -= n
			p = p[n:]
			continue
		}
		// Gather the two fixed header bytes, then the rest of the header.
		need := 2
		if t.hdrLen >= 2 {
			need = headerLen(t.hdr[0], t.hdr[1])
		}
		for t.hdrLen < need && len(p) > 0 {
			t.hdr[t.hdrLen] = p[0]
			t.hdrLen++
			p = p[1:]
			if t.hdrLen == 2 {
				need = headerLen(t.hdr[0], t.hdr[1])
			}
		}
		if t.hdrLen < need {
			return
		}
		t.frameHeader()
	}
}

// frameHeader consumes a complete header in t.hdr.
func (t *frameTracker) frameHeader() {
	b0, b1 := t.hdr[0], t.hdr[1]
	var length uint64
	switch l := b1 & 0x7f; l {
	case 126:
		length = uint64(binary.BigEndian.Uint16(t.hdr[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(t.hdr[2:10])
		if length>>63 != 0 {
			t.broken = true
			return
		}
	default:
		length = uint64(l)
	}
	if b0&0x0f == opClose {
		t.closeSeen = true
	}
	t.hdrLen = 0
	t.remaining = length
}

// headerLen is the full header length implied by the first two bytes.
func headerLen(b0, b1 byte) int {
	n := 2
	switch b1 & 0x7f {
	case 126:
		n += 2
	case 127:
		n += 8
	}
	if b1&0x80 != 0 {
		n += 4 // masking key
	}
	return n
}

const opClose = 0x8

// closeFrame builds a close frame with code and reason (at most 123 bytes,
// the control-frame limit less the code). Frames to a server must be masked.
func closeFrame(code uint16, reason string, masked bool) []byte {
	if len(reason) > 123 {
		reason = reason[:123]
	}
	payload := make([]byte, 2+len(reason))
	binary.BigEndian.PutUint16(payload, code)
	copy(payload[2:], reason)
	frame := []byte{0x80 | opClose, byte(len(payload))}
	if !masked {
		return append(frame, payload...)
	}
	frame[1] |= 0x80
	var key [4]byte
	binary.LittleEndian.PutUint32(key[:], rand.Uint32())
	frame = append(frame, key[:]...)
	for i := range payload {
		payload[i] ^= key[i%4]
	}
	return append(frame, payload...)
}
