package cmd

import (
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/node"
	"github.com/gradient-ci/gradient/scheduler"
)

// serveOptions are the flags of `gradient serve` as parsed by cobra.
type serveOptions struct {
	cfg                node.Config
	configFile         string
	logLevel           string
	trustedProxies     []string
	unsupportedTimeout time.Duration
	schedulerPolicy    string
	projectShares      []string
	fetchBandwidth     string
}

func newServeCommand(cf *clientFlags) *cobra.Command {
	o := &serveOptions{}
	c := &cobra.Command{
		Use:   "serve",
		Short: "Run a node: CI server, scheduler, binary cache and, with nix on PATH, a worker",
		Long: `Run a node: CI server, scheduler, binary cache and, with nix on PATH, a worker.

With --config FILE (env GRADIENT_CONFIG) the node reads its settings from a
TOML file. A flag given on the command line, and GRADIENT_DATA_DIR, win over
the file's key; the file wins over the built-in default. See
docs/configuration.md.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, level, err := o.config(cmd.Flags(), cf.dataDir)
			if err != nil {
				return err
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

			n, err := node.New(cfg)
			if err != nil {
				return err
			}
			return n.Run(cmd.Context())
		},
	}
	o.addFlags(c.Flags())
	return c
}

// addFlags defines the flags of `gradient serve` on f.
func (o *serveOptions) addFlags(f *pflag.FlagSet) {
	f.StringVar(&o.configFile, "config", os.Getenv("GRADIENT_CONFIG"), "TOML configuration file; flags given on the command line win over its keys (env GRADIENT_CONFIG)")
	f.StringVar(&o.cfg.Listen, "listen", "127.0.0.1:3000", "HTTP listen address, host:port")
	f.StringVar(&o.cfg.CacheKeyName, "cache-key-name", "", "name of the cache signing key created on first start (default <hostname>-1)")
	f.BoolVar(&o.cfg.NoWorker, "no-worker", false, "run no in-process worker")
	f.StringVar(&o.cfg.NixBin, "nix", "", "nix binary of the in-process worker (default: nix on PATH)")
	f.StringVar(&o.cfg.WorkerStore, "worker-store", "", "chroot store directory of the in-process worker, passed to nix as --store (default: the machine's store)")
	f.IntVar(&o.cfg.WorkerMaxJobs, "worker-max-jobs", 1, "builds the in-process worker runs at once, 1 to 64")
	f.Float64Var(&o.cfg.WorkerSpeed, "worker-speed", db.DefaultWorkerSpeed,
		"build speed of the in-process worker relative to a machine of speed 1, like a speed factor in Hydra's machines file; a positive number")
	f.BoolVar(&o.cfg.NoDefaultUpstream, "no-default-upstream", false, "create the main cache without https://cache.nixos.org as its upstream (first start only)")
	f.StringSliceVar(&o.trustedProxies, "trusted-proxy", nil, "CIDR of a reverse proxy whose X-Forwarded-For header is believed, repeatable")
	f.DurationVar(&o.unsupportedTimeout, "unsupported-timeout", node.DefaultUnsupportedTimeout,
		"how long a build waits for a connected worker with its system and required features before it fails; 0 fails it at once")
	f.DurationVar(&o.cfg.WorkerLease, "worker-lease", node.DefaultWorkerLease,
		"how long a worker may stay silent, or stay away after its connection dropped, before its jobs go to other workers (3s to 1h)")
	f.StringVar(&o.schedulerPolicy, "scheduler-policy", string(scheduler.PolicyGradient),
		"how the scheduler ranks and places builds: gradient, hydra or fifo (see docs/scheduler.md)")
	f.StringSliceVar(&o.projectShares, "scheduler-project-share", nil,
		"share of the build slots of a project as ORG/PROJECT=SHARE, such as acme/web=3; a project not listed has share 1 (repeat or separate with commas)")
	f.StringVar(&o.fetchBandwidth, "scheduler-fetch-bandwidth", node.DefaultFetchBandwidth,
		"bandwidth in bytes per second with which the scheduler converts the bytes a worker must fetch into seconds when it places a build, such as 100MB/s")
	f.IntVar(&o.cfg.Scheduler.MaxAttempts, "scheduler-max-attempts", scheduler.DefaultMaxAttempts,
		"jobs of a derivation that may end with a worker fault, as opposed to a failed build, before the derivation fails; 1 or more")
	f.DurationVar(&o.cfg.Scheduler.DefaultBuildTime, "scheduler-default-build-time", scheduler.DefaultBuildTime,
		"estimated build time at speed 1 of a derivation whose name and system have no recorded build time; 1ms or more")
	f.StringVar(&o.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	f.StringSliceVar(&o.cfg.Mesh.Listen, "mesh-listen", nil, "libp2p multiaddr the mesh listens on, such as /ip4/0.0.0.0/udp/4001/quic-v1; without it the mesh is off (repeat or separate with commas)")
	f.StringSliceVar(&o.cfg.Mesh.Bootstrap, "mesh-bootstrap", nil, "multiaddr of a member node ending in /p2p/<peer ID> (repeat or separate with commas)")
	f.StringVar(&o.cfg.Mesh.FederationFile, "mesh-federation", "", "federation JSON file of the mesh (default DATA_DIR/mesh-federation.json)")
	f.BoolVar(&o.cfg.Mesh.MDNS, "mesh-mdns", false, "find mesh members on the local network by multicast DNS")
	f.DurationVar(&o.cfg.Mesh.BuildTTL, "mesh-build-ttl", node.DefaultMeshBuildTTL,
		"lifetime of this node's announcements of running builds; it refreshes them, and checks peers' announcements for expiry, every third of this (3s to 1h)")
}

// config checks the flags, merges the configuration file into them and
// returns the node's configuration and the log level. A key of the file
// applies only when its flag is not on the command line; data_dir also
// yields to GRADIENT_DATA_DIR. dataDir is the --data-dir value.
func (o *serveOptions) config(flags *pflag.FlagSet, dataDir string) (node.Config, slog.Level, error) {
	cfg := o.cfg
	cfg.DataDir = dataDir

	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return node.Config{}, 0, fmt.Errorf("--log-level %q is invalid: give debug, info, warn or error", o.logLevel)
	}
	if cfg.WorkerMaxJobs < 1 || cfg.WorkerMaxJobs > 64 {
		return node.Config{}, 0, fmt.Errorf("--worker-max-jobs %d is out of range: give 1 to 64", cfg.WorkerMaxJobs)
	}
	for _, p := range o.trustedProxies {
		prefix, err := netip.ParsePrefix(p)
		if err != nil {
			return node.Config{}, 0, fmt.Errorf("--trusted-proxy %q is invalid: give a CIDR such as 10.0.0.0/8 or ::1/128", p)
		}
		cfg.TrustedProxies = append(cfg.TrustedProxies, prefix)
	}
	if ttl := cfg.Mesh.BuildTTL; ttl < node.MinMeshBuildTTL || ttl > node.MaxMeshBuildTTL {
		return node.Config{}, 0, fmt.Errorf("--mesh-build-ttl %v is out of range: give %v to %v", ttl, node.MinMeshBuildTTL, node.MaxMeshBuildTTL)
	}
	if err := checkMeshAddrFlags(cfg.Mesh); err != nil {
		return node.Config{}, 0, err
	}
	if lease := cfg.WorkerLease; lease < node.MinWorkerLease || lease > node.MaxWorkerLease {
		return node.Config{}, 0, fmt.Errorf("--worker-lease %v is out of range: give %v to %v", lease, node.MinWorkerLease, node.MaxWorkerLease)
	}
	timeout := o.unsupportedTimeout
	if timeout < 0 {
		return node.Config{}, 0, fmt.Errorf("--unsupported-timeout %v is negative: give a duration such as 5m, or 0 to fail such builds at once", timeout)
	}
	if err := node.CheckWorkerSpeed(cfg.WorkerSpeed); err != nil {
		return node.Config{}, 0, fmt.Errorf("--worker-speed %w", err)
	}
	if err := o.schedulerConfig(&cfg.Scheduler); err != nil {
		return node.Config{}, 0, err
	}

	buildTTLSet := flags.Changed("mesh-build-ttl")
	if o.configFile != "" {
		file, err := node.ReadConfigFile(o.configFile)
		if err != nil {
			return node.Config{}, 0, err
		}
		dataDirGiven := flags.Changed("data-dir") || os.Getenv("GRADIENT_DATA_DIR") != ""
		buildTTLSet = buildTTLSet || file.MeshBuildTTL != nil
		mergeConfigFile(&cfg, &level, &timeout, file, func(flag string) bool {
			if flag == "data-dir" {
				return dataDirGiven
			}
			return flags.Changed(flag)
		})
	}

	if err := checkMeshOff(cfg.Mesh, buildTTLSet); err != nil {
		return node.Config{}, 0, err
	}

	if timeout == 0 {
		cfg.UnsupportedTimeout = node.FailUnsupportedAtOnce
	} else {
		cfg.UnsupportedTimeout = timeout
	}
	return cfg, level, nil
}

// mergeConfigFile copies each key that file sets into cfg, level and
// timeout, unless given reports that its flag was given.
func mergeConfigFile(cfg *node.Config, level *slog.Level, timeout *time.Duration, file *node.ConfigFile, given func(flag string) bool) {
	setString := func(flag string, dst *string, src *string) {
		if src != nil && !given(flag) {
			*dst = *src
		}
	}
	setBool := func(flag string, dst *bool, src *bool) {
		if src != nil && !given(flag) {
			*dst = *src
		}
	}
	setList := func(flag string, dst *[]string, src *[]string) {
		if src != nil && !given(flag) {
			*dst = *src
		}
	}

	setString("listen", &cfg.Listen, file.Listen)
	setString("data-dir", &cfg.DataDir, file.DataDir)
	setString("cache-key-name", &cfg.CacheKeyName, file.CacheKeyName)
	setBool("no-worker", &cfg.NoWorker, file.NoWorker)
	setString("nix", &cfg.NixBin, file.NixBin)
	setString("worker-store", &cfg.WorkerStore, file.WorkerStore)
	if file.WorkerMaxJobs != nil && !given("worker-max-jobs") {
		cfg.WorkerMaxJobs = *file.WorkerMaxJobs
	}
	if file.WorkerSpeed != nil && !given("worker-speed") {
		cfg.WorkerSpeed = *file.WorkerSpeed
	}
	setBool("no-default-upstream", &cfg.NoDefaultUpstream, file.NoDefaultUpstream)
	if file.TrustedProxies != nil && !given("trusted-proxy") {
		cfg.TrustedProxies = *file.TrustedProxies
	}
	if file.WorkerLease != nil && !given("worker-lease") {
		cfg.WorkerLease = *file.WorkerLease
	}
	if file.UnsupportedTimeout != nil && !given("unsupported-timeout") {
		*timeout = *file.UnsupportedTimeout
	}
	if file.LogLevel != nil && !given("log-level") {
		*level = *file.LogLevel
	}

	setList("mesh-listen", &cfg.Mesh.Listen, file.MeshListen)
	setList("mesh-bootstrap", &cfg.Mesh.Bootstrap, file.MeshBootstrap)
	setString("mesh-federation", &cfg.Mesh.FederationFile, file.MeshFederation)
	setBool("mesh-mdns", &cfg.Mesh.MDNS, file.MeshMDNS)
	if file.MeshBuildTTL != nil && !given("mesh-build-ttl") {
		cfg.Mesh.BuildTTL = *file.MeshBuildTTL
	}

	mergeSchedulerConfig(&cfg.Scheduler, file, given)

	cfg.MainCache = file.MainCache
}

// schedulerConfig checks the scheduler flags and sets the scheduler
// settings that have no Config field of their flag's type.
func (o *serveOptions) schedulerConfig(sc *scheduler.Config) error {
	policy, err := node.ParseSchedulerPolicy(o.schedulerPolicy)
	if err != nil {
		return fmt.Errorf("--scheduler-policy %w", err)
	}
	sc.Policy = policy

	if len(o.projectShares) > 0 {
		sc.ProjectShares = make(map[string]float64, len(o.projectShares))
	}
	for _, s := range o.projectShares {
		project, share, err := node.ParseProjectShare(s)
		if err != nil {
			return fmt.Errorf("--scheduler-project-share %q is invalid: %w", s, err)
		}
		if _, dup := sc.ProjectShares[project]; dup {
			return fmt.Errorf("--scheduler-project-share %q sets the share of %s a second time: give each project once", s, project)
		}
		sc.ProjectShares[project] = share
	}

	bandwidth, err := node.ParseFetchBandwidth(o.fetchBandwidth)
	if err != nil {
		return fmt.Errorf("--scheduler-fetch-bandwidth %w", err)
	}
	sc.FetchBandwidth = bandwidth

	if sc.MaxAttempts < 1 {
		return fmt.Errorf("--scheduler-max-attempts %d is out of range: give 1 or more", sc.MaxAttempts)
	}
	if sc.DefaultBuildTime < node.MinDefaultBuildTime {
		return fmt.Errorf("--scheduler-default-build-time %v is out of range: give %v or more, such as 1m", sc.DefaultBuildTime, node.MinDefaultBuildTime)
	}
	return nil
}

// mergeSchedulerConfig copies each [scheduler] key that file sets into
// sc, unless given reports that its flag was given. A project share flag
// replaces the file's whole table.
func mergeSchedulerConfig(sc *scheduler.Config, file *node.ConfigFile, given func(flag string) bool) {
	if file.SchedulerPolicy != nil && !given("scheduler-policy") {
		sc.Policy = *file.SchedulerPolicy
	}
	if file.SchedulerProjectShares != nil && !given("scheduler-project-share") {
		sc.ProjectShares = file.SchedulerProjectShares
	}
	if file.SchedulerFetchBandwidth != nil && !given("scheduler-fetch-bandwidth") {
		sc.FetchBandwidth = *file.SchedulerFetchBandwidth
	}
	if file.SchedulerMaxAttempts != nil && !given("scheduler-max-attempts") {
		sc.MaxAttempts = *file.SchedulerMaxAttempts
	}
	if file.SchedulerDefaultBuildTime != nil && !given("scheduler-default-build-time") {
		sc.DefaultBuildTime = *file.SchedulerDefaultBuildTime
	}
}

// checkMeshAddrFlags checks that every --mesh-listen value is a multiaddr
// and every --mesh-bootstrap value a multiaddr ending in /p2p/<peer ID>,
// so that the error names the flag. The configuration file's values are
// checked by node.ReadConfigFile.
func checkMeshAddrFlags(mc node.MeshConfig) error {
	for _, s := range mc.Listen {
		addr, err := multiaddr.NewMultiaddr(s)
		if err != nil {
			return fmt.Errorf("--mesh-listen %q is not a multiaddr: give one such as /ip4/0.0.0.0/udp/4001/quic-v1 or /ip4/0.0.0.0/tcp/4001", s)
		}
		if _, err := addr.ValueForProtocol(multiaddr.P_QUIC); err == nil {
			return fmt.Errorf("--mesh-listen %q uses draft QUIC (/quic), which the mesh does not support: write /quic-v1", s)
		}
	}
	for _, s := range mc.Bootstrap {
		if _, err := peer.AddrInfoFromString(s); err != nil {
			return fmt.Errorf("--mesh-bootstrap %q is not a multiaddr ending in /p2p/<peer ID>: give an address that 'gradient mesh status' prints on the member node", s)
		}
	}
	return nil
}

// checkMeshOff rejects mesh settings that would have no effect because
// no --mesh-listen (or mesh.listen) address turns the mesh on.
// buildTTLSet reports whether --mesh-build-ttl or mesh.build_ttl was given.
func checkMeshOff(mc node.MeshConfig, buildTTLSet bool) error {
	if len(mc.Listen) > 0 {
		return nil
	}
	var set []string
	if len(mc.Bootstrap) > 0 {
		set = append(set, "--mesh-bootstrap (mesh.bootstrap)")
	}
	if mc.MDNS {
		set = append(set, "--mesh-mdns (mesh.mdns)")
	}
	if mc.FederationFile != "" {
		set = append(set, "--mesh-federation (mesh.federation)")
	}
	if buildTTLSet {
		set = append(set, "--mesh-build-ttl (mesh.build_ttl)")
	}
	if len(set) == 0 {
		return nil
	}
	verb := "is"
	if len(set) > 1 {
		verb = "are"
	}
	return fmt.Errorf("%s %s set but the mesh is off: give --mesh-listen (mesh.listen) to turn it on, or leave the setting out", strings.Join(set, " and "), verb)
}
