package node

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/dustin/go-humanize"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/multiformats/go-multiaddr"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/scheduler"
)

// maxConfigFileSize bounds the configuration file that ReadConfigFile
// reads.
const maxConfigFileSize = 1 << 20

// Limits of the cache settings in a configuration file. They equal the
// limits that cache.Store enforces, so that a file that parses is never
// rejected halfway through applying it.
const (
	maxConfigUpstreams = 16
	maxConfigList      = 256
)

// ErrConfigFile is wrapped by every error of ReadConfigFile and
// ParseConfigFile about the file's content.
var ErrConfigFile = errors.New("invalid configuration file")

// contentError is an error about the file's content. Its message is
// "config <path>: <key>: <problem>" and it wraps ErrConfigFile.
type contentError struct{ message string }

func (e *contentError) Error() string { return e.message }
func (e *contentError) Unwrap() error { return ErrConfigFile }

func newContentError(path, format string, args ...any) error {
	return &contentError{message: "config " + path + ": " + fmt.Sprintf(format, args...)}
}

// ConfigFile is a parsed and checked `gradient serve` configuration file
// in TOML. A nil field is a key the file does not set.
type ConfigFile struct {
	// Path is the file's name, used in messages.
	Path string

	Listen             *string
	DataDir            *string
	CacheKeyName       *string
	NoWorker           *bool
	NixBin             *string
	WorkerStore        *string
	WorkerMaxJobs      *int
	WorkerSpeed        *float64
	NoDefaultUpstream  *bool
	TrustedProxies     *[]netip.Prefix
	UnsupportedTimeout *time.Duration
	WorkerLease        *time.Duration
	LogLevel           *slog.Level

	MeshListen     *[]string
	MeshBootstrap  *[]string
	MeshFederation *string
	MeshMDNS       *bool
	MeshBuildTTL   *time.Duration

	SchedulerPolicy           *scheduler.Policy
	SchedulerFetchBandwidth   *float64
	SchedulerMaxAttempts      *int
	SchedulerDefaultBuildTime *time.Duration
	// SchedulerProjectShares maps "org/project" to a share, and is nil
	// when the file has no scheduler.project_shares table.
	SchedulerProjectShares map[string]float64

	// MainCache holds the [caches.main] section, or nil without one.
	MainCache *CacheSettings
}

// CacheSettings are the settings of one cache that a configuration file
// sets. The node applies them to the cache's stored settings at every
// start, so they replace values changed through the API since.
type CacheSettings struct {
	// Update holds priority, lan_priority, lan_cidrs, max_size,
	// keep_evaluations and pins. A nil field is left as stored.
	Update cache.SettingsUpdate
	// Upstreams, when not nil, is the whole upstream list: stored
	// upstreams with other URLs are removed. URLs carry no trailing
	// slash and every priority is set.
	Upstreams *[]cache.Upstream
}

// rawConfig is the file's TOML layout, before values are checked.
type rawConfig struct {
	Listen             *string             `toml:"listen"`
	DataDir            *string             `toml:"data_dir"`
	CacheKeyName       *string             `toml:"cache_key_name"`
	NoWorker           *bool               `toml:"no_worker"`
	Nix                *string             `toml:"nix"`
	WorkerStore        *string             `toml:"worker_store"`
	WorkerMaxJobs      *int                `toml:"worker_max_jobs"`
	WorkerSpeed        any                 `toml:"worker_speed"`
	NoDefaultUpstream  *bool               `toml:"no_default_upstream"`
	TrustedProxies     *[]string           `toml:"trusted_proxies"`
	UnsupportedTimeout *string             `toml:"unsupported_timeout"`
	WorkerLease        *string             `toml:"worker_lease"`
	LogLevel           *string             `toml:"log_level"`
	Mesh               rawMesh             `toml:"mesh"`
	Scheduler          rawScheduler        `toml:"scheduler"`
	Caches             map[string]rawCache `toml:"caches"`
}

type rawMesh struct {
	Listen     *[]string `toml:"listen"`
	Bootstrap  *[]string `toml:"bootstrap"`
	Federation *string   `toml:"federation"`
	MDNS       *bool     `toml:"mdns"`
	BuildTTL   *string   `toml:"build_ttl"`
}

type rawScheduler struct {
	Policy           *string        `toml:"policy"`
	ProjectShares    map[string]any `toml:"project_shares"`
	FetchBandwidth   any            `toml:"fetch_bandwidth"`
	MaxAttempts      *int           `toml:"max_attempts"`
	DefaultBuildTime *string        `toml:"default_build_time"`
}

type rawCache struct {
	Priority        *int           `toml:"priority"`
	LANPriority     *int           `toml:"lan_priority"`
	LANCIDRs        *[]string      `toml:"lan_cidrs"`
	MaxSize         any            `toml:"max_size"`
	KeepEvaluations *int           `toml:"keep_evaluations"`
	Pins            *[]string      `toml:"pins"`
	Upstreams       *[]rawUpstream `toml:"upstreams"`
}

type rawUpstream struct {
	URL      *string  `toml:"url"`
	Keys     []string `toml:"keys"`
	Priority *int     `toml:"priority"`
}

// ReadConfigFile reads and checks the configuration file at path. Every
// error starts with "config <path>: " and names the key at fault; errors
// about the content wrap ErrConfigFile.
func ReadConfigFile(path string) (*ConfigFile, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	defer f.Close()

	data, err := io.ReadAll(io.LimitReader(f, maxConfigFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if len(data) > maxConfigFileSize {
		return nil, newContentError(path, "larger than %d bytes", maxConfigFileSize)
	}

	return ParseConfigFile(path, data)
}

// ParseConfigFile parses and checks data, the content of the
// configuration file named path. It rejects unknown keys, values of the
// wrong TOML type and invalid values, and returns the first problem.
func ParseConfigFile(path string, data []byte) (*ConfigFile, error) {
	fail := func(key, format string, args ...any) error {
		return newContentError(path, "%s: %s", key, fmt.Sprintf(format, args...))
	}

	var raw rawConfig
	md, err := toml.Decode(string(data), &raw)
	if err != nil {
		// The library's messages name the line and the last key read.
		return nil, newContentError(path, "%s", strings.TrimPrefix(err.Error(), "toml: "))
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		return nil, fail(undecoded[0].String(), "unknown key")
	}

	c := &ConfigFile{
		Path:              path,
		Listen:            raw.Listen,
		DataDir:           raw.DataDir,
		CacheKeyName:      raw.CacheKeyName,
		NoWorker:          raw.NoWorker,
		NixBin:            raw.Nix,
		WorkerStore:       raw.WorkerStore,
		WorkerMaxJobs:     raw.WorkerMaxJobs,
		NoDefaultUpstream: raw.NoDefaultUpstream,
		MeshListen:        raw.Mesh.Listen,
		MeshBootstrap:     raw.Mesh.Bootstrap,
		MeshFederation:    raw.Mesh.Federation,
		MeshMDNS:          raw.Mesh.MDNS,
	}

	if err := c.checkServe(raw, fail); err != nil {
		return nil, err
	}
	if err := c.checkMesh(raw.Mesh, fail); err != nil {
		return nil, err
	}
	if err := c.checkScheduler(raw.Scheduler, fail); err != nil {
		return nil, err
	}

	names := slices.Sorted(maps.Keys(raw.Caches))
	for _, name := range names {
		if name != mainCache {
			return nil, fail("caches."+name, "unknown cache: a node has only the cache %q", mainCache)
		}
		settings, err := parseCacheSettings("caches."+name, raw.Caches[name], fail)
		if err != nil {
			return nil, err
		}
		c.MainCache = settings
	}

	return c, nil
}

// checkFunc builds the error for key from a message.
type checkFunc func(key, format string, args ...any) error

// checkServe checks the top-level keys and converts those whose TOML
// type differs from the Config field.
func (c *ConfigFile) checkServe(raw rawConfig, fail checkFunc) error {
	if c.Listen != nil {
		if _, _, err := net.SplitHostPort(*c.Listen); err != nil {
			return fail("listen", "%q is not host:port, such as 127.0.0.1:3000", *c.Listen)
		}
	}
	if c.DataDir != nil && *c.DataDir == "" {
		return fail("data_dir", "is empty: give a directory")
	}
	if c.CacheKeyName != nil && (*c.CacheKeyName == "" || strings.ContainsAny(*c.CacheKeyName, ": \t\n")) {
		return fail("cache_key_name", "%q is not a key name: give a name without colons or spaces, such as ci.example.org-1", *c.CacheKeyName)
	}
	if c.NixBin != nil && *c.NixBin == "" {
		return fail("nix", "is empty: give the nix binary, or leave the key out to use nix on PATH")
	}
	if c.WorkerStore != nil && !filepath.IsAbs(*c.WorkerStore) {
		return fail("worker_store", "%q is not an absolute path", *c.WorkerStore)
	}
	if c.WorkerMaxJobs != nil && (*c.WorkerMaxJobs < 1 || *c.WorkerMaxJobs > 64) {
		return fail("worker_max_jobs", "%d is out of range: give 1 to 64", *c.WorkerMaxJobs)
	}
	if raw.WorkerSpeed != nil {
		speed, err := tomlNumber(raw.WorkerSpeed)
		if err == nil {
			err = CheckWorkerSpeed(speed)
		}
		if err != nil {
			return fail("worker_speed", "%v", err)
		}
		c.WorkerSpeed = &speed
	}

	if raw.TrustedProxies != nil {
		prefixes := []netip.Prefix{}
		for i, s := range *raw.TrustedProxies {
			prefix, err := netip.ParsePrefix(s)
			if err != nil {
				return fail(fmt.Sprintf("trusted_proxies[%d]", i), "%q is not a CIDR such as 10.0.0.0/8 or ::1/128", s)
			}
			prefixes = append(prefixes, prefix)
		}
		c.TrustedProxies = &prefixes
	}

	if raw.UnsupportedTimeout != nil {
		d, err := time.ParseDuration(*raw.UnsupportedTimeout)
		if err != nil || d < 0 {
			return fail("unsupported_timeout", "%q is not a duration: give one such as \"5m\", or \"0s\" to fail such builds at once", *raw.UnsupportedTimeout)
		}
		c.UnsupportedTimeout = &d
	}

	if raw.WorkerLease != nil {
		d, err := time.ParseDuration(*raw.WorkerLease)
		if err != nil || d < MinWorkerLease || d > MaxWorkerLease {
			return fail("worker_lease", "%q is not a duration from %v to %v: give one such as \"30s\"", *raw.WorkerLease, MinWorkerLease, MaxWorkerLease)
		}
		c.WorkerLease = &d
	}

	if raw.LogLevel != nil {
		var level slog.Level
		if err := level.UnmarshalText([]byte(*raw.LogLevel)); err != nil {
			return fail("log_level", "%q is not a level: give debug, info, warn or error", *raw.LogLevel)
		}
		c.LogLevel = &level
	}

	return nil
}

// checkMesh checks the [mesh] section and parses its durations.
func (c *ConfigFile) checkMesh(raw rawMesh, fail checkFunc) error {
	if c.MeshListen != nil {
		for i, s := range *c.MeshListen {
			if _, err := multiaddr.NewMultiaddr(s); err != nil {
				return fail(fmt.Sprintf("mesh.listen[%d]", i), "%q is not a multiaddr such as /ip4/0.0.0.0/udp/4001/quic-v1", s)
			}
		}
	}
	if c.MeshBootstrap != nil {
		for i, s := range *c.MeshBootstrap {
			if _, err := peer.AddrInfoFromString(s); err != nil {
				return fail(fmt.Sprintf("mesh.bootstrap[%d]", i), "%q is not a multiaddr ending in /p2p/<peer ID>", s)
			}
		}
	}
	if c.MeshFederation != nil && *c.MeshFederation == "" {
		return fail("mesh.federation", "is empty: give a file, or leave the key out for DATA_DIR/mesh-federation.json")
	}
	if raw.BuildTTL != nil {
		d, err := time.ParseDuration(*raw.BuildTTL)
		if err != nil || d < MinMeshBuildTTL || d > MaxMeshBuildTTL {
			return fail("mesh.build_ttl", "%q is invalid: give a duration from %s to %s, such as \"3m\"", *raw.BuildTTL, MinMeshBuildTTL, MaxMeshBuildTTL)
		}
		c.MeshBuildTTL = &d
	}
	return nil
}

// parseCacheSettings checks one [caches.NAME] section against the rules
// of cache.Store, so that applying it cannot fail on a value.
func parseCacheSettings(prefix string, rc rawCache, fail checkFunc) (*CacheSettings, error) {
	s := &CacheSettings{}
	u := &s.Update

	if rc.Priority != nil {
		if *rc.Priority < 1 {
			return nil, fail(prefix+".priority", "%d is out of range: give 1 or more", *rc.Priority)
		}
		u.Priority = rc.Priority
	}
	if rc.LANPriority != nil {
		if *rc.LANPriority < 0 {
			return nil, fail(prefix+".lan_priority", "%d is negative: give 0 (the same as priority) or more", *rc.LANPriority)
		}
		u.LANPriority = rc.LANPriority
	}
	if rc.LANCIDRs != nil {
		if len(*rc.LANCIDRs) > maxConfigList {
			return nil, fail(prefix+".lan_cidrs", "has %d entries, at most %d are allowed", len(*rc.LANCIDRs), maxConfigList)
		}
		for i, cidr := range *rc.LANCIDRs {
			if _, err := netip.ParsePrefix(cidr); err != nil {
				return nil, fail(fmt.Sprintf("%s.lan_cidrs[%d]", prefix, i), "%q is not a CIDR such as 192.168.0.0/16", cidr)
			}
		}
		u.LANCIDRs = rc.LANCIDRs
	}

	if rc.MaxSize != nil {
		size, err := parseByteSize(rc.MaxSize)
		if err != nil {
			return nil, fail(prefix+".max_size", "%v", err)
		}
		u.MaxSize = &size
	}

	if rc.KeepEvaluations != nil {
		if *rc.KeepEvaluations < 0 {
			return nil, fail(prefix+".keep_evaluations", "%d is negative: give 0 (the default, %d) or more", *rc.KeepEvaluations, cache.DefaultKeepEvaluations)
		}
		u.KeepEvaluations = rc.KeepEvaluations
	}
	if rc.Pins != nil {
		if len(*rc.Pins) > maxConfigList {
			return nil, fail(prefix+".pins", "has %d entries, at most %d are allowed", len(*rc.Pins), maxConfigList)
		}
		for i, pin := range *rc.Pins {
			if _, err := path.Match(pin, ""); err != nil || pin == "" || strings.Contains(pin, "/") {
				return nil, fail(fmt.Sprintf("%s.pins[%d]", prefix, i), "%q is not a store path name or a name pattern such as glibc-*", pin)
			}
		}
		u.Pins = rc.Pins
	}

	if rc.Upstreams != nil {
		upstreams, err := parseUpstreams(prefix+".upstreams", *rc.Upstreams, fail)
		if err != nil {
			return nil, err
		}
		s.Upstreams = &upstreams
	}

	return s, nil
}

// parseByteSize converts a max_size value: an integer number of bytes or
// a string such as "50GiB".
func parseByteSize(v any) (int64, error) {
	switch v := v.(type) {
	case int64:
		if v < 0 {
			return 0, fmt.Errorf("%d is negative: give bytes, a size such as \"50GiB\", or 0 for no cap", v)
		}
		return v, nil
	case string:
		n, err := humanize.ParseBytes(v)
		if err != nil || n > 1<<62 {
			return 0, fmt.Errorf("%q is not a size: give one such as \"50GiB\" or \"500MB\", or 0 for no cap", v)
		}
		return int64(n), nil
	default:
		return 0, fmt.Errorf("has TOML type %T: give bytes as an integer or a size string such as \"50GiB\"", v)
	}
}

// parseUpstreams checks the [[caches.NAME.upstreams]] entries.
func parseUpstreams(prefix string, raw []rawUpstream, fail checkFunc) ([]cache.Upstream, error) {
	if len(raw) > maxConfigUpstreams {
		return nil, fail(prefix, "has %d entries, at most %d are allowed", len(raw), maxConfigUpstreams)
	}

	upstreams := []cache.Upstream{}
	for i, ru := range raw {
		key := fmt.Sprintf("%s[%d]", prefix, i)

		if ru.URL == nil {
			return nil, fail(key+".url", "is missing: give the upstream's base URL, such as https://cache.example.org")
		}
		base := strings.TrimRight(*ru.URL, "/")
		if parsed, err := url.Parse(base); err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
			return nil, fail(key+".url", "%q is not an http or https URL", *ru.URL)
		}
		if slices.ContainsFunc(upstreams, func(u cache.Upstream) bool { return u.URL == base }) {
			return nil, fail(key+".url", "%q is listed twice", *ru.URL)
		}

		if len(ru.Keys) == 0 {
			return nil, fail(key+".keys", "is missing or empty: give the public key that signs the upstream's narinfos, in name:base64 form")
		}
		for j, k := range ru.Keys {
			if _, err := narinfo.ParsePublicKey(k); err != nil {
				return nil, fail(fmt.Sprintf("%s.keys[%d]", key, j), "%q is not a public key in name:base64 form", k)
			}
		}

		priority := cache.DefaultUpstreamPriority
		if ru.Priority != nil {
			if *ru.Priority < 1 {
				return nil, fail(key+".priority", "%d is out of range: give 1 or more", *ru.Priority)
			}
			priority = *ru.Priority
		}

		upstreams = append(upstreams, cache.Upstream{URL: base, PublicKeys: slices.Clone(ru.Keys), Priority: priority})
	}
	return upstreams, nil
}
