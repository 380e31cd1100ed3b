package balancer

import (
	"fmt"
	"net"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// When the event loops cannot start, every connection falls back to two
// goroutines, and NewProxy says so once at warn level with the reason; when
// they run, it says nothing.
func TestProxyWarnsWhenEventLoopUnavailable(t *testing.T) {
	// Not parallel: evLoopsErr is the process's, and this package's
	// parallel tests start only once the sequential ones are done.
	if err := eventLoopErr(); err != nil {
		t.Fatalf("the event loop does not start on this machine: %v", err)
	}
	saved := evLoopsErr
	defer func() { evLoopsErr = saved }()
	for _, tc := range []struct {
		name string
		err  error
		want int // warnings
	}{
		{name: "event loop running", err: nil, want: 0},
		{name: "epoll refused", err: fmt.Errorf("epoll_create1: %w", unix.EPERM), want: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			evLoopsErr = tc.err
			core, logs := observer.New(zap.WarnLevel)
			NewProxy(new(Pool), NewBackendStore(), &ProxyOptions{Logger: zap.New(core)})
			got := logs.All()
			if len(got) != tc.want {
				t.Fatalf("%d warnings, want %d: %v", len(got), tc.want, got)
			}
			for _, e := range got {
				if e.ContextMap()["error"] != tc.err.Error() {
					t.Errorf("warning %q has error %v, want %q", e.Message, e.ContextMap()["error"], tc.err)
				}
				t.Logf("warned: %s (error: %v)", e.Message, e.ContextMap()["error"])
			}
			if tc.err != nil {
				// Plain TCP, which the event loop would take: it must
				// leave the connection to the goroutines.
				client, backend := tcpPair(t)
				if new(relay).startEventLoop(client, backend) {
					t.Error("startEventLoop took a connection without an event loop")
				}
			}
		})
	}
}

// tcpPair is both ends of a loopback TCP connection, closed with the test.
func tcpPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	b, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}
