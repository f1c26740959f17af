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
