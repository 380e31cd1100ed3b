package test

import (
	"os"
	"testing"

	"github.com/wsbalancer/caddy-wsbalancer/test/consuldev"
)

// TestMain runs the package's tests through consuldev.Main, which stops the
// real Consul agent the Consul tests share (consuldev.Shared) once they are
// done. Packages' tests that never ask for it start no agent.
func TestMain(m *testing.M) { os.Exit(consuldev.Main(m)) }
