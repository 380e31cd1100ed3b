//go:build !unix

package caddymodule

import "go.uber.org/zap"

// raiseFileLimit: there is no RLIMIT_NOFILE to raise here.
func raiseFileLimit(logger *zap.Logger) {}
