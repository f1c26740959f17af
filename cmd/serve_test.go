package cmd

import (
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/gradient-ci/gradient/node"
	"github.com/gradient-ci/gradient/scheduler"
)

// serveConfig parses args with the flags of `gradient serve` and the
// root's --data-dir, and returns the merged configuration.
func serveConfig(t *testing.T, args ...string) (node.Config, slog.Level, error) {
	t.Helper()
	o := &serveOptions{}
	flags := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	o.addFlags(flags)
	dataDir := flags.String("data-dir", envOr("GRADIENT_DATA_DIR", "gradient-data"), "")
	if err := flags.Parse(args); err != nil {
		t.Fatalf("parse %q: %v", args, err)
	}
	return o.config(flags, *dataDir)
}

func writeConfig(t *testing.T, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "gradient.toml")
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

const fullConfig = `
listen = "127.0.0.1:4000"
data_dir = "/srv/gradient"
cache_key_name = "file-1"
no_worker = true
nix = "/opt/nix/bin/nix"
worker_store = "/srv/store"
worker_max_jobs = 8
no_default_upstream = true
trusted_proxies = ["10.0.0.0/8"]
unsupported_timeout = "0s"
log_level = "warn"

[mesh]
listen = ["/ip4/127.0.0.1/udp/4001/quic-v1"]
federation = "/srv/federation.json"
mdns = true

[caches.main]
priority = 30
`

func TestServeConfigFromFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	cfg, level, err := serveConfig(t, "--config", writeConfig(t, fullConfig))
	if err != nil {
		t.Fatal(err)
	}

	checks := []struct {
		key       string
		got, want any
	}{
		{"listen", cfg.Listen, "127.0.0.1:4000"},
		{"data_dir", cfg.DataDir, "/srv/gradient"},
		{"cache_key_name", cfg.CacheKeyName, "file-1"},
		{"no_worker", cfg.NoWorker, true},
		{"nix", cfg.NixBin, "/opt/nix/bin/nix"},
		{"worker_store", cfg.WorkerStore, "/srv/store"},
		{"worker_max_jobs", cfg.WorkerMaxJobs, 8},
		{"no_default_upstream", cfg.NoDefaultUpstream, true},
		{"trusted_proxies", cfg.TrustedProxies[0], netip.MustParsePrefix("10.0.0.0/8")},
		{"unsupported_timeout", cfg.UnsupportedTimeout, node.FailUnsupportedAtOnce},
		{"log_level", level, slog.LevelWarn},
		{"mesh.listen", cfg.Mesh.Listen[0], "/ip4/127.0.0.1/udp/4001/quic-v1"},
		{"mesh.federation", cfg.Mesh.FederationFile, "/srv/federation.json"},
		{"mesh.mdns", cfg.Mesh.MDNS, true},
		{"caches.main.priority", *cfg.MainCache.Update.Priority, 30},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.key, c.got, c.want)
		}
	}
}

func TestServeConfigFlagsWinOverFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	cfg, level, err := serveConfig(t, "--config", writeConfig(t, fullConfig),
		"--listen", "127.0.0.1:5000", "--data-dir", "/flag/data", "--no-worker=false",
		"--worker-max-jobs", "2", "--trusted-proxy", "192.168.0.0/16",
		"--unsupported-timeout", "1m", "--log-level", "debug",
		"--mesh-listen", "/ip4/127.0.0.1/tcp/4002", "--mesh-mdns=false")
	if err != nil {
		t.Fatal(err)
	}

	checks := []struct {
		flag      string
		got, want any
	}{
		{"--listen", cfg.Listen, "127.0.0.1:5000"},
		{"--data-dir", cfg.DataDir, "/flag/data"},
		{"--no-worker", cfg.NoWorker, false},
		{"--worker-max-jobs", cfg.WorkerMaxJobs, 2},
		{"--trusted-proxy", len(cfg.TrustedProxies), 1},
		{"--trusted-proxy", cfg.TrustedProxies[0], netip.MustParsePrefix("192.168.0.0/16")},
		{"--unsupported-timeout", cfg.UnsupportedTimeout, time.Minute},
		{"--log-level", level, slog.LevelDebug},
		{"--mesh-listen", len(cfg.Mesh.Listen), 1},
		{"--mesh-listen", cfg.Mesh.Listen[0], "/ip4/127.0.0.1/tcp/4002"},
		{"--mesh-mdns", cfg.Mesh.MDNS, false},
		// Keys whose flags are not given still come from the file.
		{"cache_key_name", cfg.CacheKeyName, "file-1"},
		{"worker_store", cfg.WorkerStore, "/srv/store"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.flag, c.got, c.want)
		}
	}
}

func TestServeConfigDataDirEnvWinsOverFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "/env/data")
	cfg, _, err := serveConfig(t, "--config", writeConfig(t, `data_dir = "/file/data"`))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DataDir != "/env/data" {
		t.Errorf("DataDir = %q, want /env/data from GRADIENT_DATA_DIR", cfg.DataDir)
	}
}

func TestServeConfigEnvNamesFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", writeConfig(t, `listen = "127.0.0.1:4100"`))
	cfg, _, err := serveConfig(t)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:4100" {
		t.Errorf("Listen = %q, want 127.0.0.1:4100 from the file named by GRADIENT_CONFIG", cfg.Listen)
	}
}

func TestServeConfigWithoutFileKeepsDefaults(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", "")
	cfg, level, err := serveConfig(t)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Listen != "127.0.0.1:3000" || cfg.DataDir != "gradient-data" || level != slog.LevelInfo ||
		cfg.UnsupportedTimeout != node.DefaultUnsupportedTimeout || cfg.MainCache != nil {
		t.Errorf("serveConfig() = %+v, level %v, want the flag defaults", cfg, level)
	}
}

func TestServeConfigRejectsBadFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	path := writeConfig(t, "[[caches.main.upstreams]]\nurl = \"gopher://x\"\nkeys = []\n")
	_, _, err := serveConfig(t, "--config", path)
	if !errors.Is(err, node.ErrConfigFile) {
		t.Fatalf("serveConfig(bad file) = %v, want ErrConfigFile", err)
	}
	want := "config " + path + ": caches.main.upstreams[0].url: \"gopher://x\" is not an http or https URL"
	if err.Error() != want {
		t.Errorf("serveConfig(bad file) = %q, want %q", err, want)
	}
}

func TestServeConfigRejectsBadMeshFlags(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", "")
	const peerID = "12D3KooWAL2aA26kFN7nr43wT5cjXmjoxbUrhZU3VKZrFRGFvYWs"
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"listen not a multiaddr", []string{"--mesh-listen", "0.0.0.0:4001"},
			`--mesh-listen "0.0.0.0:4001" is not a multiaddr: give one such as /ip4/0.0.0.0/udp/4001/quic-v1 or /ip4/0.0.0.0/tcp/4001`},
		{"listen draft quic", []string{"--mesh-listen", "/ip4/127.0.0.1/udp/4001/quic"},
			`--mesh-listen "/ip4/127.0.0.1/udp/4001/quic" uses draft QUIC (/quic), which the mesh does not support: write /quic-v1`},
		{"bootstrap without peer", []string{"--mesh-listen", "/ip4/127.0.0.1/tcp/4001", "--mesh-bootstrap", "/ip4/127.0.0.1/tcp/4002"},
			`--mesh-bootstrap "/ip4/127.0.0.1/tcp/4002" is not a multiaddr ending in /p2p/<peer ID>: give an address that 'gradient mesh status' prints on the member node`},
		{"bootstrap with mesh off", []string{"--mesh-bootstrap", "/ip4/127.0.0.1/tcp/4002/p2p/" + peerID},
			"--mesh-bootstrap (mesh.bootstrap) is set but the mesh is off: give --mesh-listen (mesh.listen) to turn it on, or leave the setting out"},
		{"mdns and federation with mesh off", []string{"--mesh-mdns", "--mesh-federation", "/srv/federation.json"},
			"--mesh-mdns (mesh.mdns) and --mesh-federation (mesh.federation) are set but the mesh is off: give --mesh-listen (mesh.listen) to turn it on, or leave the setting out"},
		{"build ttl with mesh off", []string{"--mesh-build-ttl", "1m"},
			"--mesh-build-ttl (mesh.build_ttl) is set but the mesh is off: give --mesh-listen (mesh.listen) to turn it on, or leave the setting out"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := serveConfig(t, tt.args...)
			if err == nil {
				t.Fatalf("serveConfig(%q) = nil error, want %q", tt.args, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("serveConfig(%q) = %q, want %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestServeConfigMeshKeyWithoutListen(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	path := writeConfig(t, "[mesh]\nmdns = true\nbuild_ttl = \"1m\"\n")
	_, _, err := serveConfig(t, "--config", path)
	want := "--mesh-mdns (mesh.mdns) and --mesh-build-ttl (mesh.build_ttl) are set but the mesh is off: give --mesh-listen (mesh.listen) to turn it on, or leave the setting out"
	if err == nil || err.Error() != want {
		t.Errorf("serveConfig(mdns without listen) = %v, want %q", err, want)
	}
}

func TestServeConfigAcceptsMeshFlags(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", "")
	bootstrap := "/ip4/127.0.0.1/udp/4002/quic-v1/p2p/12D3KooWAL2aA26kFN7nr43wT5cjXmjoxbUrhZU3VKZrFRGFvYWs"
	cfg, _, err := serveConfig(t, "--mesh-listen", "/ip4/127.0.0.1/udp/4001/quic-v1,/ip4/127.0.0.1/tcp/4001",
		"--mesh-bootstrap", bootstrap, "--mesh-mdns", "--mesh-build-ttl", "1m")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Mesh.Listen) != 2 {
		t.Errorf("Mesh.Listen = %q, want two addresses", cfg.Mesh.Listen)
	}
	if len(cfg.Mesh.Bootstrap) != 1 || cfg.Mesh.Bootstrap[0] != bootstrap {
		t.Errorf("Mesh.Bootstrap = %q, want [%q]", cfg.Mesh.Bootstrap, bootstrap)
	}
}

const schedulerConfigFile = `
worker_speed = 1.5

[scheduler]
policy = "hydra"
fetch_bandwidth = "50MB/s"
max_attempts = 5
default_build_time = "2m"

[scheduler.project_shares]
"acme/web" = 3
"acme/docs" = 0.5
`

func TestServeConfigSchedulerDefaults(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", "")
	cfg, _, err := serveConfig(t)
	if err != nil {
		t.Fatal(err)
	}
	sc := cfg.Scheduler
	if sc.Policy != scheduler.PolicyGradient {
		t.Errorf("Policy = %q, want %q", sc.Policy, scheduler.PolicyGradient)
	}
	if sc.FetchBandwidth != scheduler.DefaultFetchBandwidth {
		t.Errorf("FetchBandwidth = %v, want %v", sc.FetchBandwidth, scheduler.DefaultFetchBandwidth)
	}
	if sc.MaxAttempts != scheduler.DefaultMaxAttempts {
		t.Errorf("MaxAttempts = %d, want %d", sc.MaxAttempts, scheduler.DefaultMaxAttempts)
	}
	if sc.DefaultBuildTime != scheduler.DefaultBuildTime {
		t.Errorf("DefaultBuildTime = %v, want %v", sc.DefaultBuildTime, scheduler.DefaultBuildTime)
	}
	if sc.ProjectShares != nil {
		t.Errorf("ProjectShares = %v, want nil", sc.ProjectShares)
	}
	if cfg.WorkerSpeed != 1 {
		t.Errorf("WorkerSpeed = %v, want 1", cfg.WorkerSpeed)
	}
}

func TestServeConfigSchedulerFromFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	cfg, _, err := serveConfig(t, "--config", writeConfig(t, schedulerConfigFile))
	if err != nil {
		t.Fatal(err)
	}
	sc := cfg.Scheduler
	checks := []struct {
		key       string
		got, want any
	}{
		{"worker_speed", cfg.WorkerSpeed, 1.5},
		{"scheduler.policy", sc.Policy, scheduler.PolicyHydra},
		{"scheduler.fetch_bandwidth", sc.FetchBandwidth, 50e6},
		{"scheduler.max_attempts", sc.MaxAttempts, 5},
		{"scheduler.default_build_time", sc.DefaultBuildTime, 2 * time.Minute},
		{"scheduler.project_shares", len(sc.ProjectShares), 2},
		{`scheduler.project_shares."acme/web"`, sc.ProjectShares["acme/web"], 3.0},
		{`scheduler.project_shares."acme/docs"`, sc.ProjectShares["acme/docs"], 0.5},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.key, c.got, c.want)
		}
	}
}

func TestServeConfigSchedulerFlagsWinOverFile(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	cfg, _, err := serveConfig(t, "--config", writeConfig(t, schedulerConfigFile),
		"--worker-speed", "3", "--scheduler-policy", "fifo", "--scheduler-fetch-bandwidth", "1GB/s",
		"--scheduler-max-attempts", "2", "--scheduler-default-build-time", "30s",
		"--scheduler-project-share", "acme/api=4", "--scheduler-project-share", "other/site=0.25,other/docs=2")
	if err != nil {
		t.Fatal(err)
	}
	sc := cfg.Scheduler
	checks := []struct {
		flag      string
		got, want any
	}{
		{"--worker-speed", cfg.WorkerSpeed, 3.0},
		{"--scheduler-policy", sc.Policy, scheduler.PolicyFIFO},
		{"--scheduler-fetch-bandwidth", sc.FetchBandwidth, 1e9},
		{"--scheduler-max-attempts", sc.MaxAttempts, 2},
		{"--scheduler-default-build-time", sc.DefaultBuildTime, 30 * time.Second},
		// The flags replace the file's table: acme/web is gone.
		{"--scheduler-project-share", len(sc.ProjectShares), 3},
		{"--scheduler-project-share acme/api", sc.ProjectShares["acme/api"], 4.0},
		{"--scheduler-project-share other/site", sc.ProjectShares["other/site"], 0.25},
		{"--scheduler-project-share other/docs", sc.ProjectShares["other/docs"], 2.0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.flag, c.got, c.want)
		}
	}
}

func TestServeConfigRejectsBadSchedulerFlags(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	t.Setenv("GRADIENT_CONFIG", "")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"policy", []string{"--scheduler-policy", "lifo"},
			`--scheduler-policy "lifo" is not a policy: give gradient, hydra or fifo`},
		{"share without equals", []string{"--scheduler-project-share", "acme/web"},
			`--scheduler-project-share "acme/web" is invalid: it has no '=': give ORG/PROJECT=SHARE, such as acme/web=3`},
		{"share without org", []string{"--scheduler-project-share", "web=3"},
			`--scheduler-project-share "web=3" is invalid: project "web" has no '/': give ORG/PROJECT, such as acme/web`},
		{"share zero", []string{"--scheduler-project-share", "acme/web=0"},
			`--scheduler-project-share "acme/web=0" is invalid: share of acme/web: 0 is out of range: give a share from 0.001 to 1000, such as 0.5 or 3`},
		{"share not a number", []string{"--scheduler-project-share", "acme/web=lots"},
			`--scheduler-project-share "acme/web=lots" is invalid: share "lots" of acme/web is not a number: give a positive number, such as 0.5 or 3`},
		{"share twice", []string{"--scheduler-project-share", "acme/web=1", "--scheduler-project-share", "acme/web=2"},
			`--scheduler-project-share "acme/web=2" sets the share of acme/web a second time: give each project once`},
		{"bandwidth", []string{"--scheduler-fetch-bandwidth", "fast"},
			`--scheduler-fetch-bandwidth "fast" is not a bandwidth: give bytes per second greater than 0, such as 100MB/s or 1GB/s`},
		{"bandwidth bits", []string{"--scheduler-fetch-bandwidth", "1Gb/s"},
			`--scheduler-fetch-bandwidth "1Gb/s" is in bits: give bytes per second with a capital B, such as 125MB/s for 1 Gbit/s`},
		{"max attempts", []string{"--scheduler-max-attempts", "0"},
			"--scheduler-max-attempts 0 is out of range: give 1 or more"},
		{"default build time", []string{"--scheduler-default-build-time", "0s"},
			"--scheduler-default-build-time 0s is out of range: give 1ms or more, such as 1m"},
		{"worker speed zero", []string{"--worker-speed", "0"},
			"--worker-speed 0 is out of range: give a speed from 0.001 to 1000, such as 1, or 2 for a machine that builds twice as fast"},
		{"worker speed infinite", []string{"--worker-speed", "Inf"},
			"--worker-speed +Inf is out of range: give a speed from 0.001 to 1000, such as 1, or 2 for a machine that builds twice as fast"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := serveConfig(t, tt.args...)
			if err == nil {
				t.Fatalf("serveConfig(%q) = nil error, want %q", tt.args, tt.want)
			}
			if err.Error() != tt.want {
				t.Errorf("serveConfig(%q) = %q, want %q", tt.args, err, tt.want)
			}
		})
	}
}

func TestServeConfigRejectsBadSchedulerKey(t *testing.T) {
	t.Setenv("GRADIENT_DATA_DIR", "")
	path := writeConfig(t, "[scheduler.project_shares]\n\"acme/web\" = -1\n")
	_, _, err := serveConfig(t, "--config", path)
	want := "config " + path + `: scheduler.project_shares."acme/web": -1 is out of range: give a share from 0.001 to 1000, such as 0.5 or 3`
	if err == nil || err.Error() != want {
		t.Errorf("serveConfig(negative share) = %v, want %q", err, want)
	}
}
