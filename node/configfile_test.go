package node

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

const testUpstreamKey = "cache.example.org-1:a/uEc6uyRzdabywUDGUkRl4+tjO8/qumOGnxKyY3t6c="

func TestParseConfigFileExample(t *testing.T) {
	c, err := ReadConfigFile(filepath.Join("..", "docs", "examples", "gradient.toml"))
	if err != nil {
		t.Fatalf("ReadConfigFile(example) = %v, want no error", err)
	}

	if c.Listen == nil || *c.Listen != "127.0.0.1:3000" {
		t.Errorf("Listen = %v, want 127.0.0.1:3000", c.Listen)
	}
	if c.WorkerMaxJobs == nil || *c.WorkerMaxJobs != 4 {
		t.Errorf("WorkerMaxJobs = %v, want 4", c.WorkerMaxJobs)
	}
	if c.UnsupportedTimeout == nil || *c.UnsupportedTimeout != 5*time.Minute {
		t.Errorf("UnsupportedTimeout = %v, want 5m", c.UnsupportedTimeout)
	}
	if c.WorkerLease == nil || *c.WorkerLease != 30*time.Second {
		t.Errorf("WorkerLease = %v, want 30s", c.WorkerLease)
	}
	if c.LogLevel == nil || *c.LogLevel != slog.LevelInfo {
		t.Errorf("LogLevel = %v, want info", c.LogLevel)
	}
	wantProxies := []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::1/128")}
	if c.TrustedProxies == nil || !slices.Equal(*c.TrustedProxies, wantProxies) {
		t.Errorf("TrustedProxies = %v, want %v", c.TrustedProxies, wantProxies)
	}
	if c.MeshListen == nil || len(*c.MeshListen) != 1 {
		t.Errorf("MeshListen = %v, want one address", c.MeshListen)
	}
	if c.MeshBuildTTL == nil || *c.MeshBuildTTL != 3*time.Minute {
		t.Errorf("MeshBuildTTL = %v, want 3m", c.MeshBuildTTL)
	}
	if c.NixBin != nil {
		t.Errorf("NixBin = %q, want nil for a commented-out key", *c.NixBin)
	}
	if c.WorkerSpeed == nil || *c.WorkerSpeed != 1 {
		t.Errorf("WorkerSpeed = %v, want 1", c.WorkerSpeed)
	}
	if c.SchedulerPolicy == nil || *c.SchedulerPolicy != scheduler.PolicyGradient {
		t.Errorf("SchedulerPolicy = %v, want gradient", c.SchedulerPolicy)
	}
	if c.SchedulerFetchBandwidth == nil || *c.SchedulerFetchBandwidth != scheduler.DefaultFetchBandwidth {
		t.Errorf("SchedulerFetchBandwidth = %v, want %v", c.SchedulerFetchBandwidth, scheduler.DefaultFetchBandwidth)
	}
	if c.SchedulerMaxAttempts == nil || *c.SchedulerMaxAttempts != scheduler.DefaultMaxAttempts {
		t.Errorf("SchedulerMaxAttempts = %v, want %d", c.SchedulerMaxAttempts, scheduler.DefaultMaxAttempts)
	}
	if c.SchedulerDefaultBuildTime == nil || *c.SchedulerDefaultBuildTime != scheduler.DefaultBuildTime {
		t.Errorf("SchedulerDefaultBuildTime = %v, want %v", c.SchedulerDefaultBuildTime, scheduler.DefaultBuildTime)
	}
	if share := c.SchedulerProjectShares["acme/web"]; len(c.SchedulerProjectShares) != 1 || share != 3 {
		t.Errorf("SchedulerProjectShares = %v, want acme/web with share 3", c.SchedulerProjectShares)
	}

	mc := c.MainCache
	if mc == nil {
		t.Fatal("MainCache = nil, want the [caches.main] section")
	}
	if mc.Update.MaxSize == nil || *mc.Update.MaxSize != 50<<30 {
		t.Errorf("MaxSize = %v, want %d", mc.Update.MaxSize, int64(50<<30))
	}
	if mc.Update.Priority == nil || *mc.Update.Priority != 40 {
		t.Errorf("Priority = %v, want 40", mc.Update.Priority)
	}
	wantUpstreams := []cache.Upstream{{URL: "https://cache.example.org", PublicKeys: []string{testUpstreamKey}, Priority: 50}}
	if mc.Upstreams == nil || !slices.EqualFunc(*mc.Upstreams, wantUpstreams, upstreamEqual) {
		t.Errorf("Upstreams = %v, want %v", mc.Upstreams, wantUpstreams)
	}
}

func upstreamEqual(a, b cache.Upstream) bool {
	return a.URL == b.URL && a.Priority == b.Priority && slices.Equal(a.PublicKeys, b.PublicKeys)
}

func TestParseConfigFileUnsetKeys(t *testing.T) {
	c, err := ParseConfigFile("min.toml", []byte(`listen = "127.0.0.1:0"`))
	if err != nil {
		t.Fatal(err)
	}
	if c.DataDir != nil || c.NoWorker != nil || c.TrustedProxies != nil || c.MeshListen != nil || c.MainCache != nil {
		t.Errorf("ParseConfigFile(listen only) set other keys: %+v", c)
	}
}

func TestParseConfigFileUpstreamDefaults(t *testing.T) {
	c, err := ParseConfigFile("u.toml", []byte(`
[[caches.main.upstreams]]
url = "http://127.0.0.1:8080/"
keys = ["`+testUpstreamKey+`"]
`))
	if err != nil {
		t.Fatal(err)
	}
	got := (*c.MainCache.Upstreams)[0]
	if got.URL != "http://127.0.0.1:8080" {
		t.Errorf("URL = %q, want the trailing slash removed", got.URL)
	}
	if got.Priority != cache.DefaultUpstreamPriority {
		t.Errorf("Priority = %d, want %d", got.Priority, cache.DefaultUpstreamPriority)
	}
	if c.MainCache.Update.Priority != nil {
		t.Errorf("Update.Priority = %d, want nil", *c.MainCache.Update.Priority)
	}
}

func TestParseConfigFileMaxSize(t *testing.T) {
	tests := []struct {
		value string
		want  int64
	}{
		{`0`, 0},
		{`1048576`, 1 << 20},
		{`"1MiB"`, 1 << 20},
		{`"500MB"`, 500_000_000},
	}
	for _, tt := range tests {
		c, err := ParseConfigFile("m.toml", []byte("[caches.main]\nmax_size = "+tt.value))
		if err != nil {
			t.Errorf("ParseConfigFile(max_size = %s) = %v, want %d", tt.value, err, tt.want)
			continue
		}
		if got := *c.MainCache.Update.MaxSize; got != tt.want {
			t.Errorf("ParseConfigFile(max_size = %s) = %d, want %d", tt.value, got, tt.want)
		}
	}
}

func TestParseConfigFileRejects(t *testing.T) {
	upstream := func(fields string) string {
		return "[[caches.main.upstreams]]\n" + fields
	}
	key := `keys = ["` + testUpstreamKey + `"]` + "\n"
	tests := []struct {
		name string
		data string
		want string // a part of the error after "config /etc/gradient.toml: "
	}{
		{"unknown top-level key", `listn = "x"`, "listn: unknown key"},
		{"unknown mesh key", "[mesh]\nport = 1", "mesh.port: unknown key"},
		{"unknown upstream key", upstream(`url = "http://127.0.0.1:1"` + "\n" + key + "weight = 2"), "caches.main.upstreams.weight: unknown key"},
		{"unknown cache", "[caches.other]\npriority = 1", `caches.other: unknown cache`},
		{"wrong type", `worker_max_jobs = "four"`, `last key "worker_max_jobs"`},
		{"wrong list type", "[mesh]\nlisten = \"/ip4/0.0.0.0/tcp/1\"", `last key "mesh.listen"`},
		{"syntax", "[caches.main\n", "expected '.' or ']' to end table name"},
		{"listen", `listen = "3000"`, "listen: \"3000\" is not host:port"},
		{"empty data dir", `data_dir = ""`, "data_dir: is empty"},
		{"key name", `cache_key_name = "a:b"`, "cache_key_name: \"a:b\" is not a key name"},
		{"relative worker store", `worker_store = "store"`, "worker_store: \"store\" is not an absolute path"},
		{"worker max jobs", `worker_max_jobs = 65`, "worker_max_jobs: 65 is out of range"},
		{"trusted proxy", `trusted_proxies = ["10.0.0.0/8", "10.0.0.1"]`, "trusted_proxies[1]: \"10.0.0.1\" is not a CIDR"},
		{"duration", `unsupported_timeout = "5"`, "unsupported_timeout: \"5\" is not a duration"},
		{"negative duration", `unsupported_timeout = "-1m"`, "unsupported_timeout: \"-1m\" is not a duration"},
		{"short lease", `worker_lease = "1s"`, "worker_lease: \"1s\" is not a duration from 3s to 1h0m0s"},
		{"log level", `log_level = "loud"`, "log_level: \"loud\" is not a level"},
		{"mesh listen", "[mesh]\nlisten = [\"0.0.0.0:4001\"]", "mesh.listen[0]: \"0.0.0.0:4001\" is not a multiaddr"},
		{"mesh build ttl too short", "[mesh]\nbuild_ttl = \"1s\"", "mesh.build_ttl: \"1s\" is invalid"},
		{"mesh build ttl not a duration", "[mesh]\nbuild_ttl = \"soon\"", "mesh.build_ttl: \"soon\" is invalid"},
		{"mesh bootstrap without peer", "[mesh]\nbootstrap = [\"/ip4/127.0.0.1/udp/4001/quic-v1\"]", "mesh.bootstrap[0]:"},
		{"priority", "[caches.main]\npriority = 0", "caches.main.priority: 0 is out of range"},
		{"lan priority", "[caches.main]\nlan_priority = -1", "caches.main.lan_priority: -1 is negative"},
		{"lan cidr", "[caches.main]\nlan_cidrs = [\"192.168.0.0/33\"]", "caches.main.lan_cidrs[0]: \"192.168.0.0/33\" is not a CIDR"},
		{"max size string", "[caches.main]\nmax_size = \"lots\"", "caches.main.max_size: \"lots\" is not a size"},
		{"max size negative", "[caches.main]\nmax_size = -1", "caches.main.max_size: -1 is negative"},
		{"max size float", "[caches.main]\nmax_size = 1.5", "caches.main.max_size: has TOML type float64"},
		{"keep evaluations", "[caches.main]\nkeep_evaluations = -2", "caches.main.keep_evaluations: -2 is negative"},
		{"pin with slash", "[caches.main]\npins = [\"a/b\"]", "caches.main.pins[0]: \"a/b\" is not a store path name"},
		{"pin bad pattern", "[caches.main]\npins = [\"glibc-[\"]", "caches.main.pins[0]:"},
		{"upstream url scheme", upstream(`url = "ftp://cache.example.org"` + "\n" + key), "caches.main.upstreams[0].url: \"ftp://cache.example.org\" is not an http or https URL"},
		{"upstream url missing", upstream(key), "caches.main.upstreams[0].url: is missing"},
		{"upstream url twice", upstream(`url = "http://127.0.0.1:1"`+"\n"+key) + upstream(`url = "http://127.0.0.1:1/"`+"\n"+key), "caches.main.upstreams[1].url: \"http://127.0.0.1:1/\" is listed twice"},
		{"upstream keys missing", upstream(`url = "http://127.0.0.1:1"`), "caches.main.upstreams[0].keys: is missing"},
		{"upstream key form", upstream(`url = "http://127.0.0.1:1"` + "\n" + `keys = ["` + testUpstreamKey + `", "nocolon"]`), "caches.main.upstreams[0].keys[1]: \"nocolon\" is not a public key"},
		{"upstream priority", upstream(`url = "http://127.0.0.1:1"` + "\n" + key + "priority = 0"), "caches.main.upstreams[0].priority: 0 is out of range"},
		{"too many upstreams", strings.Repeat(upstream(key), 17), "caches.main.upstreams: has 17 entries, at most 16"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfigFile("/etc/gradient.toml", []byte(tt.data))
			if err == nil {
				t.Fatalf("ParseConfigFile(%q) = nil error, want %q", tt.data, tt.want)
			}
			if !errors.Is(err, ErrConfigFile) {
				t.Errorf("ParseConfigFile(%q) = %v, want an error wrapping ErrConfigFile", tt.data, err)
			}
			const prefix = "config /etc/gradient.toml: "
			if !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("ParseConfigFile(%q) = %q, want %q after %q", tt.data, err, tt.want, prefix)
			}
		})
	}
}

func TestReadConfigFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "none.toml")
	_, err := ReadConfigFile(path)
	if !errors.Is(err, os.ErrNotExist) || !strings.HasPrefix(err.Error(), "config "+path+": ") {
		t.Errorf("ReadConfigFile(missing) = %v, want a not-exist error naming the file", err)
	}
}

func TestReadConfigFileTooLarge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "large.toml")
	if err := os.WriteFile(path, []byte("# "+strings.Repeat("x", maxConfigFileSize)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadConfigFile(path); !errors.Is(err, ErrConfigFile) {
		t.Errorf("ReadConfigFile(large) = %v, want ErrConfigFile", err)
	}
}

// FuzzParseConfigFile checks that no input makes the parser panic, and
// that every error names the file.
func FuzzParseConfigFile(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "config", "*.toml"))
	if err != nil {
		f.Fatal(err)
	}
	seeds = append(seeds, filepath.Join("..", "docs", "examples", "gradient.toml"))
	for _, seed := range seeds {
		data, err := os.ReadFile(seed)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfigFile("fuzz.toml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config fuzz.toml: ") {
				t.Fatalf("ParseConfigFile error %q does not name the file", err)
			}
			return
		}
		if c.MainCache != nil && c.MainCache.Upstreams != nil && len(*c.MainCache.Upstreams) > maxConfigUpstreams {
			t.Fatalf("ParseConfigFile accepted %d upstreams", len(*c.MainCache.Upstreams))
		}
	})
}

// newTestCache opens a main cache without upstreams in a fresh database.
func newTestCache(t *testing.T) *cache.Store {
	t.Helper()
	log := slog.New(slog.DiscardHandler)
	records, err := db.Open(t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })

	secret, _, err := cache.GenerateKey("test-1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(records.Badger(), cache.Config{Name: mainCache, Dir: t.TempDir(), SecretKey: secret, NoDefaultUpstream: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store
}

// recordHandler is a slog.Handler that keeps the messages it receives.
type recordHandler struct {
	messages *[]string
}

func (h recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	*h.messages = append(*h.messages, r.Message)
	return nil
}
func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }

func TestApplyCacheSettingsFileWinsOverAPI(t *testing.T) {
	ctx := context.Background()
	store := newTestCache(t)

	file, err := ParseConfigFile("f.toml", []byte(`
[caches.main]
priority = 30
pins = ["glibc-*"]

[[caches.main.upstreams]]
url = "http://127.0.0.1:9"
keys = ["`+testUpstreamKey+`"]
priority = 20
`))
	if err != nil {
		t.Fatal(err)
	}

	// Changes through the API that the file also sets, and one it does not.
	apiPriority, apiKeep := 7, 9
	if _, err := store.UpdateSettings(ctx, cache.SettingsUpdate{Priority: &apiPriority, KeepEvaluations: &apiKeep}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AddUpstream(ctx, cache.Upstream{URL: "http://127.0.0.1:10", PublicKeys: []string{testUpstreamKey}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.AddUpstream(ctx, cache.Upstream{URL: "http://127.0.0.1:9", PublicKeys: []string{testUpstreamKey}, Priority: 70}); err != nil {
		t.Fatal(err)
	}

	var messages []string
	if err := applyCacheSettings(ctx, store, file.MainCache, slog.New(recordHandler{&messages})); err != nil {
		t.Fatalf("applyCacheSettings = %v", err)
	}

	got := store.Settings()
	if got.Priority != 30 {
		t.Errorf("Priority = %d, want 30 from the file", got.Priority)
	}
	if !slices.Equal(got.Pins, []string{"glibc-*"}) {
		t.Errorf("Pins = %v, want [glibc-*] from the file", got.Pins)
	}
	if got.KeepEvaluations != apiKeep {
		t.Errorf("KeepEvaluations = %d, want %d set through the API", got.KeepEvaluations, apiKeep)
	}
	wantUpstreams := []cache.Upstream{{URL: "http://127.0.0.1:9", PublicKeys: []string{testUpstreamKey}, Priority: 20}}
	if !slices.EqualFunc(got.Upstreams, wantUpstreams, upstreamEqual) {
		t.Errorf("Upstreams = %v, want %v", got.Upstreams, wantUpstreams)
	}

	for _, want := range []string{"config file replaces stored cache setting", "config file removes stored upstream", "config file replaces stored upstream"} {
		if !slices.Contains(messages, want) {
			t.Errorf("log = %q, want %q", messages, want)
		}
	}

	// A second start with the same file changes nothing and logs nothing.
	messages = nil
	if err := applyCacheSettings(ctx, store, file.MainCache, slog.New(recordHandler{&messages})); err != nil {
		t.Fatal(err)
	}
	if len(messages) != 0 {
		t.Errorf("log of a second apply = %q, want nothing", messages)
	}
}

func TestApplyCacheSettingsEmptyUpstreamList(t *testing.T) {
	ctx := context.Background()
	store := newTestCache(t)
	if _, err := store.AddUpstream(ctx, cache.Upstream{URL: "http://127.0.0.1:10", PublicKeys: []string{testUpstreamKey}}); err != nil {
		t.Fatal(err)
	}

	file, err := ParseConfigFile("f.toml", []byte("[caches.main]\nupstreams = []"))
	if err != nil {
		t.Fatal(err)
	}
	if err := applyCacheSettings(ctx, store, file.MainCache, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := store.Settings().Upstreams; len(got) != 0 {
		t.Errorf("Upstreams = %v, want none", got)
	}
}

func TestApplyCacheSettingsNoUpstreamKey(t *testing.T) {
	ctx := context.Background()
	store := newTestCache(t)
	if _, err := store.AddUpstream(ctx, cache.Upstream{URL: "http://127.0.0.1:10", PublicKeys: []string{testUpstreamKey}}); err != nil {
		t.Fatal(err)
	}

	file, err := ParseConfigFile("f.toml", []byte("[caches.main]\npriority = 5"))
	if err != nil {
		t.Fatal(err)
	}
	if err := applyCacheSettings(ctx, store, file.MainCache, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	if got := store.Settings().Upstreams; len(got) != 1 {
		t.Errorf("Upstreams = %v, want the one added through the API", got)
	}
}
