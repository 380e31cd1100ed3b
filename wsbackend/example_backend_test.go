package wsbackend_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
)

// echo is a plain gorilla/websocket echo handler; coder/websocket handlers
// are wrapped the same way.
func echo(w http.ResponseWriter, r *http.Request) {
	up := websocket.Upgrader{}
	c, err := up.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer c.Close()
	for {
		mt, msg, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(mt, msg); err != nil {
			return
		}
	}
}

// A Counter wraps the backend's WebSocket handler and counts connections
// from the upgrade until they close.
func ExampleCounter_Wrap() {
	var counter wsbackend.Counter
	srv := httptest.NewServer(counter.Wrap(http.HandlerFunc(echo)))
	defer srv.Close()

	conn, _, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		log.Fatal(err)
	}
	conn.WriteMessage(websocket.TextMessage, []byte("hi"))
	conn.ReadMessage()
	fmt.Println("live:", counter.Live())

	conn.Close()
	for counter.Live() > 0 { // the server notices the close asynchronously
		time.Sleep(time.Millisecond)
	}
	fmt.Println("live:", counter.Live(), "total:", counter.Total())
	// Output:
	// live: 1
	// live: 0 total: 1
}

// A backend registers itself in Consul and keeps its count published; on
// shutdown it deregisters first, lets balancers notice, then closes its
// connections.
func ExampleRegister() {
	var counter wsbackend.Counter
	http.Handle("/ws", counter.Wrap(http.HandlerFunc(echo)))
	srv := &http.Server{Addr: "10.0.0.5:9101"}
	go srv.ListenAndServe()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	reg, err := wsbackend.Register(ctx, wsbackend.RegistrationOptions{
		// Client nil: the local agent, from CONSUL_HTTP_ADDR and friends.
		Service:   "chat",
		Address:   "10.0.0.5", // what balancers dial
		Port:      9101,
		PublicURL: "wss://chat-5.example.com/ws", // where assign mode sends clients
		Capacity:  10000,
		Counter:   &counter,
	})
	if err != nil {
		log.Fatal(err)
	}

	<-ctx.Done()
	dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := reg.Deregister(dctx); err != nil {
		log.Print(err)
	}
	time.Sleep(2 * time.Second) // balancers stop sending clients here
	srv.Close()                 // then close the connections (with 1001 in a real backend)
}

// A Reporter publishes a count somewhere other than Consul: here, it prints
// it. It publishes at once when it starts, then only changes worth
// publishing, at most once per MinPublishInterval.
func ExampleReporter() {
	var counter wsbackend.Counter
	counter.Add(40)
	published := make(chan struct{}, 1)
	r, err := wsbackend.NewReporter(&counter, wsbackend.ReporterOptions{
		Publish: func(ctx context.Context, connections int64) error {
			fmt.Println("published", connections)
			published <- struct{}{}
			return nil
		},
		MinPublishInterval: 10 * time.Millisecond,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	<-published

	counter.Add(2) // 5%: not worth a write now, published within RefreshAfter
	counter.Add(8) // 25% in all: published within MinPublishInterval
	<-published
	// Output:
	// published 40
	// published 50
}
