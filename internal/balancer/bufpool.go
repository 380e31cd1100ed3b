package balancer

import "sync"

// relayBufSize is large enough to move a 16 MiB message in few syscalls and
// small enough that the pool stays cheap; buffers are held only while bytes
// flow, never while a connection is idle.
const relayBufSize = 32 << 10

var relayBufPool = sync.Pool{New: func() any { b := make([]byte, relayBufSize); return &b }}

func getRelayBuf() *[]byte  { return relayBufPool.Get().(*[]byte) }
func putRelayBuf(b *[]byte) { relayBufPool.Put(b) }
