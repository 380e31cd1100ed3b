// Command consulagent runs the consultest Consul-compatible TEST DOUBLE as a
// standalone server, for local demos and tests where no Consul is installed.
// It is not Consul.
//
//	go run ./test/consulagent -listen 127.0.0.1:8500 [-token T] [-check-update-interval 5m]
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"go.uber.org/zap"

	"github.com/wsbalancer/caddy-wsbalancer/test/consultest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "consulagent:", err)
		os.Exit(1)
	}
}

func run() error {
	var opts consultest.Options
	listen := flag.String("listen", "127.0.0.1:8500", "address to serve the HTTP API on")
	flag.StringVar(&opts.ACLToken, "token", "", "enable ACLs (default deny) with this management token")
	flag.DurationVar(&opts.CheckUpdateInterval, "check-update-interval", 0,
		"check_update_interval for output-only check updates (0: Consul's 5m; negative: sync at once)")
	flag.DurationVar(&opts.ReapInterval, "reap-interval", 0,
		"how often critical services are reaped (0: Consul's 30s)")
	flag.DurationVar(&opts.MinDeregisterCriticalAfter, "min-deregister-critical-after", 0,
		"floor on deregister_critical_service_after (0: Consul's 1m)")
	flag.StringVar(&opts.Datacenter, "datacenter", "", "datacenter name (default dc1)")
	flag.StringVar(&opts.NodeName, "node", "", "node name (default testnode)")
	debug := flag.Bool("debug", false, "log every failed request")
	flag.Parse()

	logger, err := newLogger(*debug)
	if err != nil {
		return fmt.Errorf("creating logger: %w", err)
	}
	defer func() { _ = logger.Sync() }()
	opts.Logger = logger

	fmt.Println("==> " + consultest.TestDoubleNotice)
	fmt.Println("==> This is NOT Consul. Use it for local demos and tests only; never in production.")

	agent := consultest.New(opts)
	if err := agent.Start(*listen); err != nil {
		return fmt.Errorf("starting test agent: %w", err)
	}
	fmt.Printf("==> Serving a subset of Consul's HTTP API on http://%s (ACLs %s)\n", agent.Addr(), aclState(opts.ACLToken))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()

	fmt.Println("==> Shutting down the test agent")
	if err := agent.Close(); err != nil {
		return fmt.Errorf("closing test agent: %w", err)
	}
	return nil
}

func newLogger(debug bool) (*zap.Logger, error) {
	cfg := zap.NewDevelopmentConfig()
	cfg.DisableStacktrace = true
	if !debug {
		cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	}
	logger, err := cfg.Build()
	if err != nil {
		return nil, err
	}
	return logger.Named("consultest"), nil
}

func aclState(token string) string {
	if token == "" {
		return "disabled"
	}
	return "enabled, default policy deny"
}
