package nix

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
// A non-empty gcRoot is passed as --add-root: nix makes gcRoot a symlink
// to the first output and gcRoot-<output> (Nix 2.8) a symlink to each
// other one, and registers each symlink as an indirect GC root in the
// store. The outputs then survive a garbage collection until the caller
// removes the symlinks. The directory of gcRoot must exist and hold
// nothing else that starts with its base name. With an empty gcRoot no
// root is registered, and nix warns about that in the log.
func (c *Client) Realise(ctx context.Context, drvPath, gcRoot string, log io.Writer) ([]string, error) {
	if !strings.HasSuffix(drvPath, ".drv") || !strings.HasPrefix(drvPath, "/") {
		return nil, fmt.Errorf("realise %q: not a .drv store path", drvPath)
	}
	if gcRoot != "" && !filepath.IsAbs(gcRoot) {
		return nil, fmt.Errorf("realise %q: GC root %q is relative: use an absolute path", drvPath, gcRoot)
	}

	args := []string{"--realise"}
	if gcRoot != "" {
		args = append(args, "--add-root", gcRoot)
	}
	out, err := c.runOutput(ctx, command{
		binary: c.storeBinary(),
		name:   "nix-store --realise",
		args:   append(args, "--", drvPath),
		stderr: log,
	})
	if err != nil {
		return nil, err
	}

	var paths []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line == "" {
			continue
		}
		path, err := rootTarget(line, gcRoot)
		if err != nil {
			return nil, fmt.Errorf("realise %q: %w", drvPath, err)
		}
		paths = append(paths, path)
	}
	if len(paths) == 0 {
		return nil, fmt.Errorf("realise %q: nix-store printed no output paths", drvPath)
	}
	return paths, nil
}

// rootTarget returns the store path for a line that nix-store --realise
// printed. With --add-root nix prints the GC root symlinks instead of the
// store paths, so a line that names a symlink next to gcRoot is resolved.
func rootTarget(line, gcRoot string) (string, error) {
	if gcRoot == "" || filepath.Dir(line) != filepath.Dir(gcRoot) {
		return line, nil
	}
	target, err := os.Readlink(line)
	if err != nil {
		return "", fmt.Errorf("read GC root: %w", err)
	}
	if !filepath.IsAbs(target) {
		return "", fmt.Errorf("GC root %q points to %q, want an absolute store path", line, target)
	}
	return target, nil
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
