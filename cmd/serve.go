package cmd

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/node"
)

func newServeCommand(cf *clientFlags) *cobra.Command {
	var (
		cfg                node.Config
		logLevel           string
		trustedProxies     []string
		unsupportedTimeout time.Duration
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
			for _, p := range trustedProxies {
				prefix, err := netip.ParsePrefix(p)
				if err != nil {
					return fmt.Errorf("--trusted-proxy %q is invalid: give a CIDR such as 10.0.0.0/8 or ::1/128", p)
				}
				cfg.TrustedProxies = append(cfg.TrustedProxies, prefix)
			}
			switch {
			case unsupportedTimeout < 0:
				return fmt.Errorf("--unsupported-timeout %v is negative: give a duration such as 5m, or 0 to fail such builds at once", unsupportedTimeout)
			case unsupportedTimeout == 0:
				cfg.UnsupportedTimeout = node.FailUnsupportedAtOnce
			default:
				cfg.UnsupportedTimeout = unsupportedTimeout
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
	f.BoolVar(&cfg.NoDefaultUpstream, "no-default-upstream", false, "create the main cache without https://cache.nixos.org as its upstream (first start only)")
	f.StringSliceVar(&trustedProxies, "trusted-proxy", nil, "CIDR of a reverse proxy whose X-Forwarded-For header is believed, repeatable")
	f.DurationVar(&unsupportedTimeout, "unsupported-timeout", node.DefaultUnsupportedTimeout,
		"how long a build waits for a connected worker with its system and required features before it fails; 0 fails it at once")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringSliceVar(&cfg.Mesh.Listen, "mesh-listen", nil, "libp2p multiaddr the mesh listens on, such as /ip4/0.0.0.0/udp/4001/quic-v1; without it the mesh is off (repeat or separate with commas)")
	f.StringSliceVar(&cfg.Mesh.Bootstrap, "mesh-bootstrap", nil, "multiaddr of a member node ending in /p2p/<peer ID> (repeat or separate with commas)")
	f.StringVar(&cfg.Mesh.FederationFile, "mesh-federation", "", "federation JSON file of the mesh (default DATA_DIR/mesh-federation.json)")
	f.BoolVar(&cfg.Mesh.MDNS, "mesh-mdns", false, "find mesh members on the local network by multicast DNS")
	return c
}
