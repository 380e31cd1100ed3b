// Command wsecho is a small WebSocket echo backend for demos and tests. It
// echoes every message back and, with -hello, first greets each client with
// its own name so that a demo can show where connections land.
//
// With -consul it is also the example of a backend that reports its load:
// it counts its connections with wsbackend.Counter and registers itself with
// wsbackend.Register, which keeps the count published in the service meta
// that ws_balancer reads (see docs/protocol.md). On SIGINT or SIGTERM it
// deregisters first, waits -drain-wait for balancers to notice, then closes
// its connections with close code 1001 (going away).
//
//	wsecho -listen 127.0.0.1:9101 -name a -consul 127.0.0.1:8500 -capacity 1000
package main

import (
	"context"
	"expvar"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
	"github.com/hashicorp/consul/api"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/wsbalancer/caddy-wsbalancer/wsbackend"
	"github.com/wsbalancer/caddy-wsbalancer/wsbackend/token"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9101", "address to listen on")
	name := flag.String("name", "", "backend name sent by -hello and /stats (default: the listen address)")
	hello := flag.Bool("hello", false, "greet each client with \"hello from <name>\" before echoing")
	consulAddr := flag.String("consul", "", "Consul agent address to register with, host:port or URL (empty: no Consul)")
	service := flag.String("service", "ws-echo", "Consul service name")
	id := flag.String("id", "", "Consul service ID (default: <service>-<advertised host>-<port>)")
	publicURL := flag.String("public-url", "", "ws:// or wss:// URL clients use in assign mode (meta ws_url)")
	capacity := flag.Int64("capacity", 0, "connections accepted at most, advertised as ws_capacity (0: unlimited)")
	advertise := flag.String("advertise", "", "host:port balancers dial (default: the listen address)")
	token := flag.String("token", "", "Consul ACL token (default: $CONSUL_HTTP_TOKEN)")
	drainWait := flag.Duration("drain-wait", 2*time.Second, "on shutdown, time between deregistering and closing connections")
	var tokenKeys []string
	flag.Func("token-key", "verify assign-mode tokens with this public key or HMAC secret file (repeat for the previous key during a rotation)", func(path string) error {
		tokenKeys = append(tokenKeys, path)
		return nil
	})
	maxMessage := flag.Int64("max-message", 1<<20, "largest message accepted, in bytes; a client sending more is closed with 1009 (0: no limit)")
	tokenAudience := flag.String("token-audience", "", "backend ID tokens must be bound to (default: the Consul service ID, or the advertised host:port)")
	flag.Parse()

	logger := newLogger()
	defer logger.Sync()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		logger.Fatal("listening", zap.Error(err))
	}
	if *name == "" {
		*name = ln.Addr().String()
	}

	if *advertise == "" {
		*advertise = ln.Addr().String()
	}
	verify, err := tokenVerifier(tokenKeys, *tokenAudience, *consulAddr != "", *id, *service, *advertise, logger)
	if err != nil {
		logger.Fatal("setting up token verification", zap.Error(err))
	}

	var counter wsbackend.Counter
	var conns connSet
	upgrader := websocket.Upgrader{
		CheckOrigin:       func(*http.Request) bool { return true },
		EnableCompression: true,
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/stats", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "{\"name\":%q,\"live\":%d}\n", *name, counter.Live())
	})
	mux.Handle("/debug/vars", expvar.Handler())
	mux.Handle("/", verify(counter.Wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *capacity > 0 && counter.Live() >= *capacity {
			w.Header().Set("Retry-After", "1")
			http.Error(w, "at capacity", http.StatusServiceUnavailable)
			return
		}
		c, err := upgrader.Upgrade(w, r, nil)
		if err != nil {
			return // the upgrader has answered the client
		}
		defer c.Close()
		if *maxMessage > 0 {
			c.SetReadLimit(*maxMessage) // gorilla closes with 1009 Message Too Big
		}
		conns.add(c)
		defer conns.remove(c)
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
	}))))

	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	logger.Info("listening", zap.String("name", *name), zap.String("addr", ln.Addr().String()))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var reg *wsbackend.Registration
	if *consulAddr != "" {
		opts := wsbackend.RegistrationOptions{
			Service: *service, ID: *id, PublicURL: *publicURL, Capacity: *capacity,
			Counter: &counter, Logger: logger,
		}
		reg, err = register(ctx, *consulAddr, *token, *advertise, opts)
		if err != nil {
			logger.Fatal("registering with Consul", zap.Error(err))
		}
	}

	select {
	case <-ctx.Done():
	case err := <-served:
		logger.Fatal("serving", zap.Error(err))
	}
	stop() // a second signal kills at once
	logger.Info("shutting down", zap.Int64("connections", counter.Live()))

	// Deregister first, so that balancers stop sending clients here, and
	// give them a moment to notice.
	if reg != nil {
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := reg.Deregister(dctx); err != nil {
			logger.Error("deregistering", zap.Error(err))
		}
		cancel()
		time.Sleep(*drainWait)
	}
	// Refuse new connections, then say goodbye to the open ones.
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	srv.Shutdown(sctx)
	cancel()
	conns.closeAll(websocket.CloseGoingAway, "server shutting down", &counter, 2*time.Second)
	logger.Info("stopped", zap.Int64("connections", counter.Live()))
}

// register registers with the Consul agent at addr, advertising advertise
// (host:port) as the address balancers dial.
func register(ctx context.Context, addr, token, advertise string, opts wsbackend.RegistrationOptions) (*wsbackend.Registration, error) {
	host, portStr, err := net.SplitHostPort(advertise)
	if err != nil {
		return nil, fmt.Errorf("parsing -advertise %q: %w", advertise, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("parsing -advertise %q: %w", advertise, err)
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		host = "" // listening on all interfaces: let Consul use the node's address
	}
	cfg := api.DefaultConfig() // honours CONSUL_HTTP_* variables
	cfg.Address = addr
	if token != "" {
		cfg.Token = token
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		return nil, err
	}
	opts.Client, opts.Address, opts.Port = client, host, port
	return wsbackend.Register(ctx, opts)
}

// connSet holds the open connections, so that shutdown can close them.
type connSet struct {
	mu sync.Mutex
	m  map[*websocket.Conn]struct{}
}

func (s *connSet) add(c *websocket.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		s.m = make(map[*websocket.Conn]struct{})
	}
	s.m[c] = struct{}{}
}

func (s *connSet) remove(c *websocket.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, c)
}

func (s *connSet) snapshot() []*websocket.Conn {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*websocket.Conn, 0, len(s.m))
	for c := range s.m {
		list = append(list, c)
	}
	return list
}

// closeAll sends every connection a close frame with code and reason, waits
// up to grace for the clients to answer (the handlers then return and the
// counter drops), and drops whatever is left.
func (s *connSet) closeAll(code int, reason string, counter *wsbackend.Counter, grace time.Duration) {
	msg := websocket.FormatCloseMessage(code, reason)
	deadline := time.Now().Add(grace)
	for _, c := range s.snapshot() {
		// WriteControl may run concurrently with the handler's writes.
		c.WriteControl(websocket.CloseMessage, msg, deadline)
	}
	for counter.Live() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range s.snapshot() {
		c.Close()
	}
}

func newLogger() *zap.Logger {
	cfg := zap.NewProductionConfig()
	cfg.Encoding = "console"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.DisableStacktrace = true
	logger, err := cfg.Build()
	if err != nil {
		panic(err)
	}
	return logger.Named("wsecho")
}

// tokenVerifier returns middleware that admits only upgrades carrying a valid
// assign-mode token for this backend, or a pass-through without keys. The
// audience defaults to the ID the balancer binds tokens to: the Consul
// service ID (as Register derives it) or the static backend's host:port.
func tokenVerifier(keyFiles []string, audience string, consul bool, id, service, advertise string, logger *zap.Logger) (func(http.Handler) http.Handler, error) {
	if len(keyFiles) == 0 {
		return func(h http.Handler) http.Handler { return h }, nil
	}
	if audience == "" {
		audience = advertise
		if consul {
			audience = id
			if audience == "" {
				host, port, err := net.SplitHostPort(advertise)
				if err != nil {
					return nil, fmt.Errorf("advertise address %q: %w", advertise, err)
				}
				audience = service + "-" + host + "-" + port
			}
		}
	}
	keys := make([]token.Key, 0, len(keyFiles))
	for _, path := range keyFiles {
		k, err := token.LoadKeyFile(path, "")
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	v, err := token.NewVerifier(token.VerifierOptions{Keys: keys, Audience: audience})
	if err != nil {
		return nil, err
	}
	rejects := new(token.RejectCounter)
	expvar.Publish("token_rejections", rejects)
	logger.Info("verifying assign-mode tokens", zap.String("audience", audience), zap.Int("keys", len(keys)))
	return token.Middleware(v, token.MiddlewareOptions{OnReject: func(r *http.Request, reason string) {
		rejects.OnReject(r, reason)
		logger.Info("token rejected", zap.String("reason", reason), zap.String("remote", r.RemoteAddr))
	}}), nil
}
