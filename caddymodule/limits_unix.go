//go:build unix

package caddymodule

import (
	"sync"
	"syscall"

	"go.uber.org/zap"
)

// fileLimitOnce: the limit is per process, so it is raised and logged once,
// not at every config reload.
var fileLimitOnce sync.Once

// raiseFileLimit raises the open-file soft limit to the hard limit (Go
// already does this at start on Linux; this covers embedders that lowered
// it) and logs how many proxied connections that allows: each one costs two
// descriptors, client side and backend side.
func raiseFileLimit(logger *zap.Logger) {
	fileLimitOnce.Do(func() {
		var lim syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			logger.Warn("reading the open-file limit", zap.Error(err))
			return
		}
		if lim.Cur < lim.Max {
			raised := lim
			raised.Cur = lim.Max
			if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
				logger.Warn("raising the open-file limit", zap.Uint64("soft", lim.Cur), zap.Uint64("hard", lim.Max), zap.Error(err))
			} else {
				lim = raised
			}
		}
		// Keep a little room for listeners, logs and Consul.
		capacity := (int64(lim.Cur) - 100) / 2
		logger.Info("open-file limit sets the proxied connection capacity",
			zap.Uint64("nofile", lim.Cur),
			zap.Int64("max_proxied_connections", max(capacity, 0)),
			zap.String("raise_with", "LimitNOFILE= in the systemd unit, or ulimit -n"))
	})
}
