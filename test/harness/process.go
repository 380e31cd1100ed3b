package harness

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Process is a child process of a test: Caddy, a cmd/wsecho backend, the
// assign-mode burst client. A child that goes wrong fails the test that
// started it, even when everything the test checked looked right: at the
// test's end (t.Cleanup) the harness stops it if it still runs, then reports
// with t.Errorf
//
//   - a data race report (WARNING: DATA RACE, from a -race build), a panic
//     or a fatal runtime error in its output, and
//   - an abnormal end: a non-zero exit status, or death by a signal, unless
//     the harness or the test had told it to stop (Stop, Kill, Signal).
//
// Without this, a race or a panic inside Caddy is printed to a log no one
// reads, and the test passes as long as its clients were served.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{}

	mu      sync.Mutex
	sent    []syscall.Signal // every signal the harness or the test sent
	stopped bool             // one of them was SIGTERM, SIGINT or SIGKILL
}

// StartCmd starts cmd as a child of t, in its own process group (killed
// with the test binary if it dies), and checks it at the end of t as
// Process describes. Its standard error, and its standard output unless
// cmd has one already, go to Output; a standard error cmd has already gets
// a copy.
func StartCmd(t testing.TB, cmd *exec.Cmd) *Process {
	t.Helper()
	p := &Process{name: filepath.Base(cmd.Path), cmd: cmd, out: new(syncBuffer), done: make(chan struct{})}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if cmd.Stdout == nil {
		cmd.Stdout = p.out
	}
	if cmd.Stderr == nil {
		cmd.Stderr = p.out
	} else {
		cmd.Stderr = io.MultiWriter(cmd.Stderr, p.out)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", p.name, err)
		return nil
	}
	go func() {
		cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.Kill()
		if err := p.trouble(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return p
}

// StartProcess starts the program name with args as StartCmd does, and
// waits until addr (if not empty) accepts connections.
func StartProcess(t testing.TB, addr string, name string, args ...string) *Process {
	t.Helper()
	p := StartCmd(t, exec.Command(name, args...))
	if addr == "" {
		return p
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			t.Fatalf("%s exited at start:\n%s", p.name, p.Output())
			return p
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not listening on %s after 30s:\n%s", p.name, addr, p.Output())
	return p
}

// Output is what the process has written so far (standard error, and
// standard output unless the command had its own).
func (p *Process) Output() string { return p.out.String() }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Pid is the process's ID.
func (p *Process) Pid() int { return p.cmd.Process.Pid }

// Signal sends sig to the process's group. The process may then end by it
// (or, for SIGTERM, SIGINT and SIGKILL, with any exit status) without
// failing the test.
func (p *Process) Signal(sig syscall.Signal) error {
	select {
	case <-p.done:
		// Its group may be gone, its ID taken by another process.
		return os.ErrProcessDone
	default:
	}
	p.mu.Lock()
	p.sent = append(p.sent, sig)
	p.stopped = p.stopped || sig == syscall.SIGTERM || sig == syscall.SIGINT || sig == syscall.SIGKILL
	p.mu.Unlock()
	return syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Stop ends the process as a service manager would: SIGTERM, then SIGKILL
// if it still runs after 5 s. It returns once the process has exited.
func (p *Process) Stop() {
	if p.Signal(syscall.SIGTERM) != nil {
		return
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.Kill()
	}
}

// Kill ends the process with SIGKILL and returns once it has exited.
func (p *Process) Kill() {
	p.Signal(syscall.SIGKILL)
	<-p.done
}

// troubleRe finds what the Go runtime prints when a program goes wrong: at
// the start of a line, so a log message that merely quotes one (Caddy logs
// JSON, a recovered handler panic is "http: panic serving ...") is not
// taken for it.
var troubleRe = regexp.MustCompile(`(?m)^(WARNING: DATA RACE|panic: |fatal error: )`)

// trouble reports what is wrong with the process, as Process describes, or
// nil. A process still running is wrong only for its output.
func (p *Process) trouble() error {
	out := p.Output()
	var problems []string
	if loc := troubleRe.FindAllStringIndex(out, -1); loc != nil {
		first := strings.TrimSpace(out[loc[0][0]:loc[0][1]])
		problems = append(problems, fmt.Sprintf("its output has %q (%d report(s) in all); from the first:\n%s",
			first, len(loc), excerpt(out[loc[0][0]:], 80)))
	}
	select {
	case <-p.done:
		why := p.abnormalEnd()
		switch {
		case why == "":
		case problems != nil:
			problems = append(problems, why) // the output is above
		default:
			problems = append(problems, fmt.Sprintf("%s; its output ends:\n%s", why, lastLines(out, 30)))
		}
	default:
	}
	if problems == nil {
		return nil
	}
	return fmt.Errorf("child process %s (pid %d): %s", p.name, p.Pid(), strings.Join(problems, "\nand "))
}

// abnormalEnd says what was wrong with the way the process ended, or "".
// The process must have exited.
func (p *Process) abnormalEnd() string {
	if p.cmd.ProcessState == nil {
		return ""
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	if !ok {
		return ""
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case ws.Signaled():
		for _, s := range p.sent {
			if s == ws.Signal() {
				return ""
			}
		}
		return fmt.Sprintf("it died of signal %d (%v), which neither the harness nor the test sent", int(ws.Signal()), ws.Signal())
	case ws.ExitStatus() != 0 && !p.stopped:
		return fmt.Sprintf("it exited with status %d before anything told it to stop", ws.ExitStatus())
	}
	return ""
}

// excerpt is the start of s, at most n lines and 16 KiB.
func excerpt(s string, n int) string {
	if len(s) > 16<<10 {
		s = s[:16<<10]
	}
	lines := strings.SplitAfter(s, "\n")
	if len(lines) > n {
		lines = append(lines[:n], "...\n")
	}
	return strings.TrimRight(strings.Join(lines, ""), "\n")
}

// lastLines is the end of s, at most n lines.
func lastLines(s string, n int) string {
	if strings.TrimSpace(s) == "" {
		return "(nothing)"
	}
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
