package balancer

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/protocol"
)

// frame builds a frame header plus payload, masked or not.
func frame(op byte, payload []byte, masked bool) []byte {
	b := []byte{0x80 | op}
	var lenByte byte
	if masked {
		lenByte = 0x80
	}
	switch n := len(payload); {
	case n < 126:
		b = append(b, lenByte|byte(n))
	case n < 1<<16:
		b = append(b, lenByte|126, 0, 0)
		binary.BigEndian.PutUint16(b[2:], uint16(n))
	default:
		b = append(b, lenByte|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	if masked {
		b = append(b, 1, 2, 3, 4)
	}
	return append(b, payload...)
}

func TestFrameTracker(t *testing.T) {
	text := frame(0x1, []byte("hello"), false)
	mid := frame(0x2, bytes.Repeat([]byte{7}, 300), true)
	big := frame(0x2, make([]byte, 70000), false)
	closeF := frame(opClose, []byte{0x03, 0xe8}, false)
	stream := bytes.Join([][]byte{text, mid, big, closeF}, nil)

	for _, chunk := range []int{1, 2, 3, 7, 100, 4096, len(stream)} {
		var tr frameTracker
		boundaries := 0
		for off := 0; off < len(stream); off += chunk {
			end := min(off+chunk, len(stream))
			tr.observe(stream[off:end])
			if tr.atBoundary() {
				boundaries++
			}
			if tr.closeSeen && end < len(stream)-len(closeF)+2 {
				t.Fatalf("chunk %d: close seen too early at %d", chunk, end)
			}
		}
		if !tr.atBoundary() || !tr.closeSeen {
			t.Fatalf("chunk %d: at end boundary=%v closeSeen=%v", chunk, tr.atBoundary(), tr.closeSeen)
		}
	}

	var tr frameTracker
	tr.observe(text[:3])
	if tr.atBoundary() {
		t.Fatal("mid-frame reported as boundary")
	}
	tr.observe(text[3:])
	if !tr.atBoundary() {
		t.Fatal("end of frame not a boundary")
	}
	tr.observe([]byte{0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0})
	if !tr.broken || tr.atBoundary() {
		t.Fatal("64-bit length with the high bit set must stop tracking")
	}
}

func TestCloseFrame(t *testing.T) {
	for _, masked := range []bool{false, true} {
		f := closeFrame(protocol.CloseGoingAway, "backend went away", masked)
		var tr frameTracker
		tr.observe(f)
		if !tr.closeSeen || !tr.atBoundary() {
			t.Fatalf("masked=%v: built close frame does not parse as one", masked)
		}
		payload := f[2:]
		if masked {
			key := f[2:6]
			payload = append([]byte(nil), f[6:]...)
			for i := range payload {
				payload[i] ^= key[i%4]
			}
		}
		if code := binary.BigEndian.Uint16(payload); code != protocol.CloseGoingAway || string(payload[2:]) != "backend went away" {
			t.Fatalf("masked=%v: payload %v", masked, payload)
		}
	}
	if f := closeFrame(protocol.CloseInternalError, string(bytes.Repeat([]byte("x"), 500)), false); len(f) != 2+125 {
		t.Fatalf("long reason not cut to the control frame limit: %d bytes", len(f))
	}
}

func FuzzFrameTracker(f *testing.F) {
	f.Add(frame(0x1, []byte("hi"), false), 3)
	f.Add(frame(0x2, make([]byte, 300), true), 1)
	f.Add([]byte{0x88, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 2)
	f.Fuzz(func(t *testing.T, stream []byte, chunk int) {
		if chunk <= 0 || chunk > len(stream)+1 {
			chunk = len(stream) + 1
		}
		var whole, parts frameTracker
		whole.observe(stream)
		for off := 0; off < len(stream); off += chunk {
			parts.observe(stream[off:min(off+chunk, len(stream))])
		}
		if whole.atBoundary() != parts.atBoundary() || whole.closeSeen != parts.closeSeen || whole.broken != parts.broken {
			t.Fatalf("chunking changed the result: whole %+v parts %+v", whole, parts)
		}
	})
}
