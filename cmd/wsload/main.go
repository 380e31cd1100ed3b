// Command wsload opens WebSocket connections through the balancer, reads
// each backend's greeting (wsecho -hello) and prints how the connections
// spread over the backends. It holds them for -hold, then closes them.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	url := flag.String("url", "ws://127.0.0.1:8080/ws", "WebSocket URL to connect to")
	n := flag.Int("n", 30, "connections to open")
	hold := flag.Duration("hold", 2*time.Second, "how long to hold them before closing")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second+*hold)
	defer cancel()
	var (
		mu      sync.Mutex
		spread  = map[string]int{}
		conns   []*websocket.Conn
		failed  int
		wg      sync.WaitGroup
		limiter = make(chan struct{}, 16)
	)
	for range *n {
		wg.Add(1)
		limiter <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-limiter }()
			c, _, err := websocket.DefaultDialer.DialContext(ctx, *url, nil)
			if err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
				log.Printf("dial: %v", err)
				return
			}
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			_, msg, err := c.ReadMessage()
			backend := "(no greeting)"
			if err == nil {
				backend = strings.TrimPrefix(string(msg), "hello from ")
			}
			c.SetReadDeadline(time.Time{})
			mu.Lock()
			spread[backend]++
			conns = append(conns, c)
			mu.Unlock()
		}()
	}
	wg.Wait()
	names := make([]string, 0, len(spread))
	for name := range spread {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Printf("%d connections to %s:\n", len(conns), *url)
	for _, name := range names {
		fmt.Printf("  %-20s %3d %s\n", name, spread[name], strings.Repeat("#", spread[name]))
	}
	time.Sleep(*hold)
	for _, c := range conns {
		c.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		c.Close()
	}
	if failed > 0 {
		fmt.Printf("%d connections failed\n", failed)
		os.Exit(1)
	}
}
