// Command misbehave is a child process that goes wrong on purpose, for the
// harness's own tests: they check that the harness reports what it does.
// It lives under testdata so that ./... never builds, vets or ships it.
//
//	misbehave -do race -listen 127.0.0.1:8000
//
// -do picks the misbehaviour:
//
//	race    two goroutines write one variable unsynchronised (reported
//	        only by a -race build), then it runs until stopped
//	panic   a goroutine panics: exit status 2
//	fatal   the runtime dies of a stack overflow ("fatal error:")
//	exit    exits with status 3, printing nothing
//	signal  kills itself with SIGKILL, a signal the harness did not send
//	nothing runs until stopped, as a well-behaved server does
//	done    exits with status 0 at once
//
// With -listen it listens there once it has misbehaved (so a test can wait
// for that), and runs until stopped.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"syscall"
	"time"
)

func main() {
	do := flag.String("do", "nothing", "race, panic, fatal, exit, signal, nothing or done")
	listen := flag.String("listen", "", "listen here once misbehaved, and run until stopped")
	flag.Parse()

	switch *do {
	case "race":
		race()
	case "panic":
		done := make(chan struct{})
		go func() {
			defer close(done)
			panic("misbehave: panicking as asked")
		}()
		<-done
	case "fatal":
		// A small limit makes the overflow quick; the runtime throws, it
		// does not panic, so nothing can recover it.
		debug.SetMaxStack(1 << 20)
		recurse(0)
	case "exit":
		os.Exit(3)
	case "signal":
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
	case "done":
		return
	case "nothing":
	default:
		fmt.Fprintf(os.Stderr, "misbehave: unknown -do %q\n", *do)
		os.Exit(1)
	}

	if *listen == "" {
		// Not select{}: with no other goroutine the runtime would call
		// that a deadlock and die; a pending timer keeps it content.
		for {
			time.Sleep(time.Hour)
		}
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		c.Close()
	}
}

// recurse never returns; its result keeps the compiler from turning it into
// a loop.
func recurse(n int) int { return recurse(n+1) + 1 }

// counter is the variable race writes from two goroutines without a lock.
var counter int

// race writes counter from two goroutines with nothing ordering the writes.
// The race detector reports such a pair whether or not the writes happen to
// overlap in time, so the report comes every run.
func race() {
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { counter++ })
	}
	wg.Wait()
}
