package worker

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

// RemoteConfig configures a worker that connects to a node over the
// network.
type RemoteConfig struct {
	// Server is the node's URL, such as "http://127.0.0.1:3000".
	Server string
	// Token is the worker's token from `gradient worker register`.
	Token string
	// Worker configures nix. Its Substituters and TrustedPublicKeys are
	// replaced by the node's cache, which the node names in its Welcome.
	Worker Config
	// Systems default to NativeSystem. The worker announces Features and
	// nix's own system-features; Features go to nix as
	// extra-system-features.
	Systems  []string
	Features []string
	// SpoolDir holds compressed NARs while they upload. Default the
	// system's temporary directory.
	SpoolDir string
}

// RunRemote connects to the node and runs the jobs it offers until ctx
// ends, reconnecting with backoff whenever the connection drops. It
// returns nil when ctx ends and a *protocol.RejectError when the node
// rejects the worker, such as for a revoked token.
func RunRemote(ctx context.Context, cfg RemoteConfig, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Server == "" || cfg.Token == "" {
		return fmt.Errorf("remote worker: the node's URL and the worker's token are required")
	}
	if len(cfg.Systems) == 0 {
		cfg.Systems = []string{NativeSystem()}
	}
	if cfg.Worker.MaxJobs == 0 {
		cfg.Worker.MaxJobs = 1
	}
	if cfg.SpoolDir == "" {
		cfg.SpoolDir = os.TempDir()
	}
	// A spool directory that cannot be written would fail every upload
	// later, as a fault of each job; fail at start instead.
	if err := os.MkdirAll(cfg.SpoolDir, 0o700); err != nil {
		return fmt.Errorf("create spool directory: %w", err)
	}
	probe, err := os.CreateTemp(cfg.SpoolDir, "gradient-probe-*")
	if err != nil {
		return fmt.Errorf("spool directory %q is not writable: %w", cfg.SpoolDir, err)
	}
	probe.Close()
	os.Remove(probe.Name())
	storeDir := cfg.Worker.StoreDir
	if storeDir == "" {
		storeDir = "/nix/store"
	}
	// Nix builds for its own system-features and the extra ones, so the
	// worker announces both.
	for _, f := range DetectFeatures(ctx, cfg.Worker, logger) {
		if !slices.Contains(cfg.Features, f) {
			cfg.Features = append(cfg.Features, f)
		}
	}

	// The node's Welcome names its cache and key, so the nix client is
	// made after the first handshake and again only if they change.
	var (
		mu      sync.Mutex
		current *Worker
		key     string
	)
	setup := func(ctx context.Context, welcome *protocol.Welcome) (protocol.Worker, error) {
		mu.Lock()
		defer mu.Unlock()
		cacheURL := strings.TrimSuffix(cfg.Server, "/") + welcome.CachePath
		wkey := cacheURL + " " + welcome.CachePublicKey
		if current != nil && key == wkey {
			return current, nil
		}
		wcfg := cfg.Worker
		if len(cfg.Features) > 0 {
			// Nix checks requiredSystemFeatures against its own list, so
			// the features the scheduler places jobs by must reach it.
			wcfg.ExtraOptions = append([]nix.Option{{Name: "extra-system-features", Value: strings.Join(cfg.Features, " ")}}, cfg.Worker.ExtraOptions...)
		}
		wcfg.Substituters = []string{cacheURL}
		wcfg.TrustedPublicKeys = []string{welcome.CachePublicKey}
		w, err := New(wcfg, logger)
		if err != nil {
			return nil, err
		}
		logger.Info("worker ready", "worker_id", welcome.WorkerID, "substituter", cacheURL, "systems", strings.Join(cfg.Systems, ","), "max_jobs", wcfg.MaxJobs)
		current, key = w, wkey
		return w, nil
	}

	return protocol.RunWorker(ctx, protocol.DialWebSocket(cfg.Server, cfg.Token), protocol.RunConfig{
		ServeConfig: protocol.ServeConfig{
			Systems:  cfg.Systems,
			Features: cfg.Features,
			MaxJobs:  cfg.Worker.MaxJobs,
			Setup:    setup,
			SpoolDir: cfg.SpoolDir,
			StoreDir: storeDir,
			Logger:   logger,
		},
	})
}

// DetectFeatures returns the system-features of the nix that cfg runs,
// for a worker to announce. It logs and returns none when nix cannot
// tell, so builds that need such a feature then wait for another worker.
func DetectFeatures(ctx context.Context, cfg Config, logger *slog.Logger) []string {
	probe, err := New(cfg, logger)
	if err == nil {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		var features []string
		features, err = probe.Nix().SystemFeatures(ctx)
		if err == nil {
			logger.Info("announcing nix's system features", "features", strings.Join(features, ","))
			return features
		}
	}
	logger.Warn("reading nix's system-features failed, so this worker announces none; pass them with --features", "err", err)
	return nil
}

// NativeSystem returns the Nix system string of this machine, such as
// "x86_64-linux".
// NOTE: this ignores nix's extra-platforms setting, so a worker that could
// also build i686-linux announces its native system only.
func NativeSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}
