// Command wsecho is a small WebSocket echo backend for demos and tests. It
// echoes every message back and, with -hello, first greets each client with
// its own name so that a demo can show where connections land.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9101", "address to listen on")
	name := flag.String("name", "", "backend name sent by -hello and /stats (default: the listen address)")
	hello := flag.Bool("hello", false, "greet each client with \"hello from <name>\" before echoing")
	flag.Parse()
	if *name == "" {
		*name = *listen
	}

	var live atomic.Int64
	upgrader := websocket.Upgrader{
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: true,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "{\"name\":%q,\"live\":%d}\n", *name, live.Load())
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // the upgrader has answered the client
		}
		defer c.Close()
		live.Add(1)
		defer live.Add(-1)
		if *hello {
			if err := c.WriteMessage(websocket.TextMessage, []byte("hello from "+*name)); err != nil {
				return
			}
		}
		for {
			mt, msg, err := c.ReadMessage()
			if err != nil {
				return
			}
			if err := c.WriteMessage(mt, msg); err != nil {
				return
			}
		}
	})

	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Printf("wsecho %s listening on %s", *name, *listen)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Fatalf("wsecho: %v", err)
	}
}
