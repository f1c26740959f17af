package nix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

const (
	// maxStderrTail is how much of the end of stderr is kept to extract
	// nix's error message from.
	maxStderrTail = 64 << 10

	// maxJSONOutput bounds the stdout that a JSON-producing command may
	// write. A walk over a large package set is a few megabytes.
	maxJSONOutput = 256 << 20

	// waitDelay is how long a cancelled nix may take to stop its builders
	// and exit before it gets SIGKILL.
	waitDelay = 10 * time.Second
)

// ErrOutputTooLarge is wrapped when a command writes more output than the
// Client accepts.
var ErrOutputTooLarge = errors.New("nix output too large")

// Error is a nix command that ran and exited with a non-zero status.
type Error struct {
	// Command is the command and subcommand, such as "nix eval".
	Command string
	// ExitCode is the process exit status, -1 if a signal killed it.
	ExitCode int
	// Message is nix's last error message without the "error: " prefix,
	// as ErrorMessage extracts it from stderr.
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s failed with exit code %d: %s", e.Command, e.ExitCode, e.Message)
}

// command describes one process to run.
type command struct {
	binary string
	// name is used in errors, such as "nix eval".
	name   string
	args   []string
	stdout io.Writer
	// stderr, if set, receives stderr as nix writes it. A write error
	// stops the copy to stderr but not the command.
	stderr io.Writer
}

// run runs cmd in its own process group. Cancelling ctx sends SIGTERM to
// the group, on which nix stops its builders. Nix gets SIGKILL if it has
// not exited after waitDelay, and the rest of the group gets SIGKILL once
// nix has exited. run then returns an error wrapping ctx.Err(). A non-zero
// exit returns an *Error.
func (c *Client) run(ctx context.Context, cmd command) error {
	tail := &tailBuffer{max: maxStderrTail}
	var stderr io.Writer = tail
	if cmd.stderr != nil {
		stderr = io.MultiWriter(tail, &lenientWriter{w: cmd.stderr})
	}

	proc := exec.CommandContext(ctx, cmd.binary, append(c.settingArgs(), cmd.args...)...)
	proc.Stdout = cmd.stdout
	proc.Stderr = stderr
	proc.SysProcAttr = processAttributes()
	// Nix runs sandboxed builders in their own session, out of reach of
	// a signal to nix's process group. On SIGTERM nix kills its builders
	// before it exits; SIGKILL would leave them running.
	proc.Cancel = func() error {
		return syscall.Kill(-proc.Process.Pid, syscall.SIGTERM)
	}
	proc.WaitDelay = waitDelay

	err := proc.Run()
	if ctx.Err() != nil && proc.Process != nil {
		// Kill what is left of the process group, such as helpers that
		// ignored SIGTERM. It fails with ESRCH when the group is empty.
		_ = syscall.Kill(-proc.Process.Pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("run %s: %w", cmd.name, ctx.Err())
	}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		return &Error{Command: cmd.name, ExitCode: exitErr.ExitCode(), Message: ErrorMessage(tail.Bytes())}
	}
	if err != nil && proc.Process == nil {
		return fmt.Errorf("run %s: %w: %w", cmd.name, ErrNotStarted, err)
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", cmd.name, err)
	}
	return nil
}

// ErrNotStarted is wrapped by the error of a command whose nix process
// could not be started, such as a binary that is missing or not
// executable.
var ErrNotStarted = errors.New("nix could not be started")

// runOutput runs cmd and returns its stdout, at most maxJSONOutput bytes.
func (c *Client) runOutput(ctx context.Context, cmd command) ([]byte, error) {
	out := &limitedBuffer{max: maxJSONOutput}
	cmd.stdout = out
	if err := c.run(ctx, cmd); err != nil {
		return nil, err
	}
	if out.overflow {
		return nil, fmt.Errorf("run %s: %w: more than %d bytes on stdout", cmd.name, ErrOutputTooLarge, out.max)
	}
	return out.buf.Bytes(), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()

	t.buf = append(t.buf, p...)
	if excess := len(t.buf) - t.max; excess > 0 {
		t.buf = append(t.buf[:0], t.buf[excess:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) Bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.buf)
}

// limitedBuffer stores up to max bytes and then discards the rest while
// still accepting writes, so the process is not killed by a broken pipe
// before the caller can report the overflow.
type limitedBuffer struct {
	max      int
	buf      bytes.Buffer
	overflow bool
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - l.buf.Len(); len(p) > room {
		l.overflow = true
		l.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return l.buf.Write(p)
}

// lenientWriter forwards writes to w until the first error and then drops
// them, so a log reader that went away does not stop a build.
type lenientWriter struct {
	w      io.Writer
	failed bool
}

func (l *lenientWriter) Write(p []byte) (int, error) {
	if !l.failed {
		if _, err := l.w.Write(p); err != nil {
			l.failed = true
		}
	}
	return len(p), nil
}
