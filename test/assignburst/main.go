// Command assignburst is the client side of the assign-mode burst test: it
// makes n /assign requests from c goroutines, paced evenly over a duration,
// and has every client connect to the URL it was given, check an echo and
// hold the connection.
//
// It runs as a process of its own, built without the race detector, so that
// the burst reaches the speed its test asks for (3000 in about one second)
// even when the tests themselves run with -race. It prints one JSON
// line with the result, then holds the connections until its standard input
// closes, so that the test can read the backends' counts meanwhile.
//
//	assignburst -assign http://127.0.0.1:8001/assign,http://127.0.0.1:8002/assign -n 3000 -c 50 -over 1s
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/wsbalancer/caddy-wsbalancer/test/harness"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/client"
)

func main() {
	assign := flag.String("assign", "", "comma-separated /assign URLs, used in turn")
	n := flag.Int("n", 3000, "assignments")
	conc := flag.Int("c", 50, "goroutines making assignments")
	over := flag.Duration("over", time.Second, "pace the assignments evenly over this long")
	timeout := flag.Duration("timeout", 2*time.Minute, "overall limit")
	flag.Parse()
	urls := strings.Split(*assign, ",")
	if *assign == "" || *n < 1 || *conc < 1 {
		fmt.Fprintln(os.Stderr, "assignburst: -assign, -n and -c are required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	res, conns := run(ctx, urls, *n, *conc, *over)
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		os.Exit(1)
	}
	// Hold the connections until the test has looked at the backends.
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
	if res.Failures > 0 {
		os.Exit(1)
	}
}

func run(ctx context.Context, urls []string, n, conc int, over time.Duration) (*harness.AssignBurstResult, []*websocket.Conn) {
	hc := &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc},
		Timeout:   30 * time.Second,
	}
	dialer := &websocket.Dialer{HandshakeTimeout: 30 * time.Second}
	latencies := make([]time.Duration, n)
	connects := make([]time.Duration, n)
	backends := make([]string, n)
	conns := make([]*websocket.Conn, n)
	var failures atomic.Int64
	var firstErr atomic.Pointer[string]
	fail := func(err error) {
		failures.Add(1)
		msg := err.Error()
		firstErr.CompareAndSwap(nil, &msg)
	}
	var dials, workers sync.WaitGroup
	dialSem := make(chan struct{}, 256)
	start := time.Now()
	for g := range conc {
		workers.Go(func() {
			for i := g; i < n; i += conc {
				if wait := time.Until(start.Add(over * time.Duration(i) / time.Duration(n))); wait > 0 {
					time.Sleep(wait)
				}
				t0 := time.Now()
				asg, err := client.RequestAssignment(ctx, urls[i%len(urls)], &client.AssignDialOptions{HTTPClient: hc})
				latencies[i] = time.Since(t0)
				if err != nil {
					fail(fmt.Errorf("assignment %d: %w", i, err))
					continue
				}
				backends[i] = asg.Backend
				answered := time.Now()
				dials.Add(1)
				dialSem <- struct{}{}
				go func() {
					defer dials.Done()
					defer func() { <-dialSem }()
					c, _, err := dialer.DialContext(ctx, asg.URL, nil)
					if err != nil {
						fail(fmt.Errorf("client %d dialing %s: %w", i, asg.Backend, err))
						return
					}
					conns[i] = c
					connects[i] = time.Since(answered)
					if err := echo(c); err != nil {
						fail(fmt.Errorf("client %d: %w", i, err))
					}
				}()
			}
		})
	}
	workers.Wait()
	took := time.Since(start)
	dials.Wait()

	res := &harness.AssignBurstResult{
		Took:      took,
		AssignP50: harness.Percentile(latencies, 0.5), AssignP99: harness.Percentile(latencies, 0.99),
		ConnectP50: harness.Percentile(connects, 0.5), ConnectP99: harness.Percentile(connects, 0.99),
		Failures: failures.Load(), ByBackend: map[string]int{},
	}
	if p := firstErr.Load(); p != nil {
		res.FirstError = *p
	}
	for i, b := range backends {
		if b != "" {
			res.ByBackend[b]++
		}
		if conns[i] != nil {
			res.Connected++
		}
	}
	return res, conns
}

func echo(c *websocket.Conn) error {
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := c.WriteMessage(websocket.TextMessage, []byte("hi")); err != nil {
		return fmt.Errorf("writing: %w", err)
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, msg, err := c.ReadMessage()
	if err != nil {
		return fmt.Errorf("reading the echo: %w", err)
	}
	if string(msg) != "hi" {
		return errors.New("echo: got " + string(msg))
	}
	c.SetReadDeadline(time.Time{})
	c.SetWriteDeadline(time.Time{})
	return nil
}
