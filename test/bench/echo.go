package main

// The echo backend. It runs in a child process of the tool
// (`bench -role backend -listen 127.0.0.1:0,127.0.0.1:0`) so that its memory
// and CPU are not mixed with the load client's. Every listen address serves:
//
//	/stats  JSON {"active":[n per listener],"accepted":total}
//	/*      WebSocket upgrade; every data message is echoed back with the
//	        same type; pings are answered by gorilla's default handler.
//
// It prints "LISTEN <addr>" per listener, then "READY", and exits when its
// standard input is closed (the parent is gone) or on SIGTERM/SIGINT.

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

type backendStats struct {
	Active   []int64 `json:"active"`
	Accepted int64   `json:"accepted"`
}

func runBackend(listen string) int {
	addrs := strings.Split(listen, ",")
	active := make([]atomic.Int64, len(addrs))
	var accepted atomic.Int64

	upgrader := websocket.Upgrader{
		ReadBufferSize:  1024,
		WriteBufferSize: 1024,
		CheckOrigin:     func(*http.Request) bool { return true },
	}
	stats := func(w http.ResponseWriter, _ *http.Request) {
		s := backendStats{Active: make([]int64, len(addrs)), Accepted: accepted.Load()}
		for i := range active {
			s.Active[i] = active[i].Load()
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s)
	}

	for i, a := range addrs {
		ln, err := net.Listen("tcp", strings.TrimSpace(a))
		if err != nil {
			fmt.Fprintf(os.Stderr, "backend: listen %s: %v\n", a, err)
			return 1
		}
		idx := i
		mux := http.NewServeMux()
		mux.HandleFunc("/stats", stats)
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			c, err := upgrader.Upgrade(w, r, nil)
			if err != nil {
				return // Upgrade already replied with an HTTP error
			}
			active[idx].Add(1)
			accepted.Add(1)
			defer active[idx].Add(-1)
			defer c.Close()
			for {
				mt, data, err := c.ReadMessage()
				if err != nil {
					return
				}
				if err := c.WriteMessage(mt, data); err != nil {
					return
				}
			}
		})
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		fmt.Printf("LISTEN %s\n", ln.Addr())
	}
	fmt.Println("READY")

	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-done:
	case <-sig:
	}
	return 0
}
