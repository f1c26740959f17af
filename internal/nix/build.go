package nix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
)

// BuildFailed reports whether err is or wraps an *Error from a build that
// nix ran and that failed: a builder exiting non-zero, a timeout, or a
// fixed-output hash mismatch. The nix manual page "Special exit codes
// for build failure" lists 100 (builder failed), 101 (timeout), 102 (hash
// mismatch) and 104 (not deterministic), which --keep-going combines as
// bits, so any code from 0x60 to 0x6f counts. Other failures, such as a
// missing .drv file or an unreachable store, exit with 1.
func BuildFailed(err error) bool {
	var nixErr *Error
	return errors.As(err, &nixErr) && nixErr.ExitCode&^0x0f == 0x60
}

// Realise builds the derivation drvPath with `nix-store --realise`, which
// every nix version has, substituting what it can from the substituters.
// Nix's log goes to log as nix writes it; log may be nil. It returns the
// output paths in the order nix prints them. A failed build returns an
// *Error for which BuildFailed is true.
//
// NOTE: no GC root is registered for the outputs, so a garbage collection
// in the same store between Realise and the upload can delete them.
func (c *Client) Realise(ctx context.Context, drvPath string, log io.Writer) ([]string, error) {
	if !strings.HasSuffix(drvPath, ".drv") || !strings.HasPrefix(drvPath, "/") {
		return nil, fmt.Errorf("realise %q: not a .drv store path", drvPath)
	}

	out, err := c.runOutput(ctx, command{
		binary: c.storeBinary(),
		name:   "nix-store --realise",
		args:   []string{"--realise", "--", drvPath},
		stderr: log,
	})
	if err != nil {
		return nil, err
	}

	var paths []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			paths = append(paths, line)
		}
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("realise %q: nix-store printed no output paths", drvPath)
	}
	return paths, nil
}

// DumpPath writes the NAR serialisation of the store path to w with `nix
// store dump-path`, streaming it as nix produces it. It works in a chroot
// store, unlike `nix-store --dump`, which reads the logical path from the
// file system. An error from w stops nix and is returned.
func (c *Client) DumpPath(ctx context.Context, storePath string, w io.Writer) error {
	if !strings.HasPrefix(storePath, "/") {
		return fmt.Errorf("dump path %q: not an absolute store path", storePath)
	}

	// A writer error must kill nix, because nix would otherwise block on
	// a full stdout pipe that no goroutine reads any more.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cw := &errorWriter{w: w, onError: cancel}
	err := c.run(ctx, command{
		binary: c.cfg.Binary,
		name:   "nix store dump-path",
		args:   []string{"store", "dump-path", "--", storePath},
		stdout: cw,
	})
	if cw.err != nil {
		return fmt.Errorf("dump path %q: write NAR: %w", storePath, cw.err)
	}
	return err
}

// errorWriter records the first error of w, so that DumpPath can report it
// instead of the broken pipe that nix then dies of.
type errorWriter struct {
	w       io.Writer
	onError func()
	err     error
}

func (e *errorWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
		e.onError()
	}
	return n, err
}
