package cmd

import (
	"fmt"
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/node"
)

func newServeCommand(cf *clientFlags) *cobra.Command {
	var (
		cfg      node.Config
		logLevel string
	)
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run a node: CI server, scheduler, binary cache and, with nix on PATH, a worker",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q is invalid: give debug, info, warn or error", logLevel)
			}
			if cfg.WorkerMaxJobs < 1 || cfg.WorkerMaxJobs > 64 {
				return fmt.Errorf("--worker-max-jobs %d is out of range: give 1 to 64", cfg.WorkerMaxJobs)
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			cfg.DataDir = cf.dataDir

			n, err := node.New(cfg)
			if err != nil {
				return err
			}
			return n.Run(cmd.Context())
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Listen, "listen", "127.0.0.1:3000", "HTTP listen address, host:port")
	f.StringVar(&cfg.CacheKeyName, "cache-key-name", "", "name of the cache signing key created on first start (default <hostname>-1)")
	f.BoolVar(&cfg.NoWorker, "no-worker", false, "run no in-process worker")
	f.StringVar(&cfg.NixBin, "nix", "", "nix binary of the in-process worker (default: nix on PATH)")
	f.StringVar(&cfg.WorkerStore, "worker-store", "", "chroot store directory of the in-process worker, passed to nix as --store (default: the machine's store)")
	f.IntVar(&cfg.WorkerMaxJobs, "worker-max-jobs", 1, "builds the in-process worker runs at once, 1 to 64")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	return c
}
