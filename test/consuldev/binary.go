package consuldev

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Version is the Consul release the tests run.
const Version = "1.14.11"

var binary struct {
	once sync.Once
	path string
	err  error
}

// Binary returns the path of the Consul binary: $CONSUL_BIN when set, else
// what test/consul/build.sh prints (it builds Consul once, then reuses it).
func Binary() (string, error) {
	binary.once.Do(func() {
		binary.path, binary.err = findBinary()
	})
	return binary.path, binary.err
}

func findBinary() (string, error) {
	if p := os.Getenv("CONSUL_BIN"); p != "" {
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	script := filepath.Join(root, "test", "consul", "build.sh")
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(script)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("building Consul with %s: %w\n%s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	return lines[len(lines)-1], nil
}

// repoRoot walks up from the working directory (a package directory under
// go test) to the directory holding test/consul/build.sh.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "test", "consul", "build.sh")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("test/consul/build.sh not found above the working directory; set CONSUL_BIN")
		}
		dir = parent
	}
}
