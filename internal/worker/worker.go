// Package worker runs evaluation and build jobs with the real nix, as the
// protocol.Worker of a node.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

// defaultSandboxShell is mounted as /bin/sh in the sandbox when it exists
// and Config.SandboxPaths is nil. It is a statically linked busybox, which
// needs nothing else from the host.
const defaultSandboxShell = "/bin/busybox"

// Config configures a Worker. The zero value runs "nix" from PATH on the
// default store, sandboxed, with no substituters and one job at a time.
type Config struct {
	// NixBinary is the nix executable. Default "nix".
	NixBinary string

	// StoreDir is the root of a chroot store. Empty means the default
	// store. It must be absolute.
	StoreDir string

	// Substituters are binary cache URLs; the node's cache comes first
	// so that a build fetches inputs built elsewhere from it.
	Substituters []string

	// TrustedPublicKeys verify substituted paths, as "name:base64".
	TrustedPublicKeys []string

	// DisableSandbox runs builders without the nix sandbox. The sandbox
	// is on by default.
	DisableSandbox bool

	// SandboxPaths are mounted into the sandbox, as "path" or
	// "target=source". Nil means "/bin/sh=/bin/busybox" when
	// /bin/busybox exists, else nothing; an empty non-nil list means
	// nothing.
	SandboxPaths []string

	// BuildUsersGroup is the group of the build users. Empty runs
	// builders as the worker's user.
	BuildUsersGroup string

	// ExtraOptions are passed to every nix command after the settings
	// above, so they override them.
	ExtraOptions []nix.Option

	// MaxJobs bounds the evaluations and builds that run at once.
	// Default 1.
	MaxJobs int

	// GCRootDir holds a directory per build with the GC roots of its
	// outputs, from the realise until the upload ends. Default the
	// system's temporary directory. It must be absolute.
	GCRootDir string
}

// Worker runs jobs with nix. It implements protocol.Worker and is safe for
// concurrent use: at most Config.MaxJobs jobs run at once and the others
// wait for a slot or for their context to end.
type Worker struct {
	nix       *nix.Client
	logger    *slog.Logger
	slots     chan struct{}
	gcRootDir string
}

var _ protocol.Worker = (*Worker)(nil)

// New returns a Worker for cfg. It checks the configuration but does not
// start nix. A nil logger discards log records.
func New(cfg Config, logger *slog.Logger) (*Worker, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.NixBinary == "" {
		cfg.NixBinary = "nix"
	}
	if cfg.MaxJobs == 0 {
		cfg.MaxJobs = 1
	}
	if cfg.MaxJobs < 0 {
		return nil, fmt.Errorf("worker config: MaxJobs is %d: use 1 or more", cfg.MaxJobs)
	}
	if cfg.GCRootDir == "" {
		cfg.GCRootDir = os.TempDir()
	}
	if !filepath.IsAbs(cfg.GCRootDir) {
		return nil, fmt.Errorf("worker config: GCRootDir %q is relative: use an absolute path", cfg.GCRootDir)
	}
	if cfg.SandboxPaths == nil {
		if _, err := os.Stat(defaultSandboxShell); err == nil {
			cfg.SandboxPaths = []string{"/bin/sh=" + defaultSandboxShell}
		}
	}

	client, err := nix.New(nix.Config{
		Binary:            cfg.NixBinary,
		StoreDir:          cfg.StoreDir,
		Substituters:      cfg.Substituters,
		TrustedPublicKeys: cfg.TrustedPublicKeys,
		Sandbox:           !cfg.DisableSandbox,
		SandboxPaths:      cfg.SandboxPaths,
		BuildUsersGroup:   cfg.BuildUsersGroup,
		ExtraOptions:      cfg.ExtraOptions,
	})
	if err != nil {
		return nil, fmt.Errorf("worker config: %w", err)
	}

	return &Worker{
		nix:       client,
		logger:    logger.With("component", "worker"),
		slots:     make(chan struct{}, cfg.MaxJobs),
		gcRootDir: cfg.GCRootDir,
	}, nil
}

// Nix returns the client the worker runs nix with.
func (w *Worker) Nix() *nix.Client {
	return w.nix
}

// acquire waits for a job slot. The caller must call the returned release.
func (w *Worker) acquire(ctx context.Context) (release func(), err error) {
	select {
	case w.slots <- struct{}{}:
		return func() { <-w.slots }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("wait for a job slot: %w", ctx.Err())
	}
}

// nixMessage returns nix's message if err is or wraps a *nix.Error.
func nixMessage(err error) (string, bool) {
	var nixErr *nix.Error
	if errors.As(err, &nixErr) {
		return nixErr.Message, true
	}
	return "", false
}

// markFault marks an error of a job whose nix could not be started as a
// fault of the worker, so that the node runs the job elsewhere instead of
// failing it.
func markFault(err error) error {
	if errors.Is(err, nix.ErrNotStarted) && !errors.Is(err, protocol.ErrWorkerFault) {
		return fmt.Errorf("%w (%w)", err, protocol.ErrWorkerFault)
	}
	return err
}
