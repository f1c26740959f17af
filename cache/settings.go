package cache

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

const (
	// DefaultUpstreamURL is the upstream a new cache gets unless
	// Config.NoDefaultUpstream is set.
	DefaultUpstreamURL = "https://cache.nixos.org"
	// DefaultUpstreamKey is the public key that signs the narinfos of
	// DefaultUpstreamURL.
	DefaultUpstreamKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
	// DefaultUpstreamPriority is the priority of an upstream added
	// without one. A lower number is preferred.
	DefaultUpstreamPriority = 50
	// DefaultKeepEvaluations is how many of the last evaluations of each
	// project keep their paths when Settings.KeepEvaluations is zero.
	DefaultKeepEvaluations = 3

	// maxUpstreams bounds the upstreams of one cache, because every miss
	// asks all of them at once.
	maxUpstreams = 16
	// maxListSetting bounds each list in Settings.
	maxListSetting = 256
)

// ErrInvalidSettings is wrapped by the errors of UpdateSettings,
// AddUpstream and RemoveUpstream for a value the caller must fix.
var ErrInvalidSettings = errors.New("invalid cache settings")

// Upstream is a binary cache that misses are pulled through from.
type Upstream struct {
	// URL is the base URL of the binary cache, http or https, such as
	// "https://cache.nixos.org". It is stored without a trailing slash.
	URL string `json:"url"`
	// PublicKeys are the keys, in Nix's "<name>:<base64>" form, whose
	// signatures make a narinfo from this upstream trusted. At least one
	// is required.
	PublicKeys []string `json:"public_keys"`
	// Priority orders upstreams that all hold a path: the lowest number
	// wins. It defaults to DefaultUpstreamPriority.
	Priority int `json:"priority"`
}

// Settings are the cache settings that an administrator changes at run
// time. They are stored in badger under the cache's key prefix and
// survive restarts.
type Settings struct {
	// Upstreams are asked, all at once, for every narinfo the cache does
	// not hold.
	Upstreams []Upstream `json:"upstreams"`
	// Priority is the nix-cache-info priority served to clients outside
	// LANCIDRs. Nix prefers the cache with the lower number.
	Priority int `json:"priority"`
	// LANPriority is the priority served to clients inside LANCIDRs.
	// Zero means Priority.
	LANPriority int `json:"lan_priority,omitempty"`
	// LANCIDRs are the client networks that get LANPriority, such as
	// "192.168.0.0/16" and "fd00::/8".
	LANCIDRs []string `json:"lan_cidrs,omitempty"`
	// MaxSize is the size cap of the NAR files in bytes that garbage
	// collection enforces. Zero means no cap.
	MaxSize int64 `json:"max_size,omitempty"`
	// KeepEvaluations is how many of the last evaluations of each project
	// keep their output paths and closures during garbage collection. Zero
	// means DefaultKeepEvaluations.
	KeepEvaluations int `json:"keep_evaluations,omitempty"`
	// Pins are store path names that garbage collection keeps with their
	// closures: either a base name "<hash>-<name>" or a path.Match pattern
	// on the name after the hash, such as "glibc-*".
	Pins []string `json:"pins,omitempty"`
}

// SettingsUpdate changes the fields of Settings that are not nil, and
// leaves the others as they are.
type SettingsUpdate struct {
	Priority        *int      `json:"priority,omitempty"`
	LANPriority     *int      `json:"lan_priority,omitempty"`
	LANCIDRs        *[]string `json:"lan_cidrs,omitempty"`
	MaxSize         *int64    `json:"max_size,omitempty"`
	KeepEvaluations *int      `json:"keep_evaluations,omitempty"`
	Pins            *[]string `json:"pins,omitempty"`
	// Upstreams, when set, replaces the whole list of upstreams in the
	// same write as the other fields. The API does not take it: it edits
	// upstreams one at a time.
	Upstreams *[]Upstream `json:"-"`
}

// compiledSettings is Settings parsed for the request path.
type compiledSettings struct {
	Settings

	upstreams []*upstream.Upstream
	lanCIDRs  []netip.Prefix
}

func (s *Store) settingsKey() []byte {
	return []byte(s.keyPrefix + "settings")
}

// loadSettings reads the stored settings, or stores the initial ones when
// the cache is new.
func (s *Store) loadSettings() error {
	var settings Settings

	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(s.settingsKey())
		if err != nil {
			return err
		}

		return item.Value(func(value []byte) error {
			return json.Unmarshal(value, &settings)
		})
	})

	switch {
	case errors.Is(err, badger.ErrKeyNotFound):
		settings = Settings{Priority: s.cfg.Priority}
		if !s.cfg.NoDefaultUpstream {
			settings.Upstreams = []Upstream{{URL: DefaultUpstreamURL, PublicKeys: []string{DefaultUpstreamKey}, Priority: DefaultUpstreamPriority}}
		}

		s.logger.Info("cache created", "upstreams", len(settings.Upstreams))

		return s.saveSettings(settings)
	case err != nil:
		return fmt.Errorf("read settings of cache %q: %w", s.cfg.Name, err)
	}

	compiled, err := s.compileSettings(settings)
	if err != nil {
		return fmt.Errorf("read settings of cache %q: %w", s.cfg.Name, err)
	}

	s.settings.Store(compiled)

	return nil
}

// saveSettings checks settings, stores them and makes them current.
func (s *Store) saveSettings(settings Settings) error {
	compiled, err := s.compileSettings(settings)
	if err != nil {
		return err
	}

	data, err := json.Marshal(settings)
	if err != nil {
		return err
	}

	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(s.settingsKey(), data) }); err != nil {
		return fmt.Errorf("write settings of cache %q: %w", s.cfg.Name, err)
	}

	s.settings.Store(compiled)

	return nil
}

// compileSettings checks settings and builds the upstream clients.
func (s *Store) compileSettings(settings Settings) (*compiledSettings, error) {
	c := &compiledSettings{Settings: settings}

	if settings.Priority < 1 || settings.LANPriority < 0 {
		return nil, fmt.Errorf("%w: priority must be at least 1 and lan_priority must not be negative", ErrInvalidSettings)
	}

	if settings.MaxSize < 0 {
		return nil, fmt.Errorf("%w: max_size %d is negative", ErrInvalidSettings, settings.MaxSize)
	}

	if settings.KeepEvaluations < 0 {
		return nil, fmt.Errorf("%w: keep_evaluations %d is negative", ErrInvalidSettings, settings.KeepEvaluations)
	}

	if len(settings.Upstreams) > maxUpstreams {
		return nil, fmt.Errorf("%w: %d upstreams, at most %d are allowed", ErrInvalidSettings, len(settings.Upstreams), maxUpstreams)
	}

	if len(settings.LANCIDRs) > maxListSetting || len(settings.Pins) > maxListSetting {
		return nil, fmt.Errorf("%w: lan_cidrs and pins hold at most %d entries each", ErrInvalidSettings, maxListSetting)
	}

	for _, cidr := range settings.LANCIDRs {
		prefix, err := netip.ParsePrefix(cidr)
		if err != nil {
			return nil, fmt.Errorf("%w: lan_cidrs entry %q is not a CIDR prefix such as 192.168.0.0/16", ErrInvalidSettings, cidr)
		}

		c.lanCIDRs = append(c.lanCIDRs, prefix.Masked())
	}

	for _, pin := range settings.Pins {
		if _, err := path.Match(pin, ""); err != nil || pin == "" || strings.Contains(pin, "/") {
			return nil, fmt.Errorf("%w: pin %q is not a store path name or name pattern", ErrInvalidSettings, pin)
		}
	}

	for _, u := range settings.Upstreams {
		client, err := upstream.New(upstream.Config{
			URL:        u.URL,
			PublicKeys: u.PublicKeys,
			Priority:   u.Priority,
			StoreDir:   s.cfg.StoreDir,
			Client:     s.cfg.UpstreamClient,
			Breaker:    s.cfg.UpstreamBreaker,
			Now:        s.cfg.Clock.Now,
		})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidSettings, err)
		}

		c.upstreams = append(c.upstreams, client)
	}

	return c, nil
}

// currentSettings returns the settings in effect. The result is shared
// and must not be changed.
func (s *Store) currentSettings() *compiledSettings {
	return s.settings.Load()
}

// Settings returns a copy of the cache's settings.
func (s *Store) Settings() Settings {
	return cloneSettings(s.currentSettings().Settings)
}

func cloneSettings(in Settings) Settings {
	out := in
	out.Upstreams = nil

	for _, u := range in.Upstreams {
		u.PublicKeys = slices.Clone(u.PublicKeys)
		out.Upstreams = append(out.Upstreams, u)
	}

	out.LANCIDRs = slices.Clone(in.LANCIDRs)
	out.Pins = slices.Clone(in.Pins)

	return out
}

// UpdateSettings applies update, stores the result and returns it. An
// invalid value leaves the settings unchanged and returns an error
// wrapping ErrInvalidSettings.
func (s *Store) UpdateSettings(ctx context.Context, update SettingsUpdate) (Settings, error) {
	var upstreams []Upstream
	if update.Upstreams != nil {
		upstreams = make([]Upstream, 0, len(*update.Upstreams))
		for _, u := range *update.Upstreams {
			u, err := normalizeUpstream(u)
			if err != nil {
				return Settings{}, err
			}
			if slices.ContainsFunc(upstreams, func(old Upstream) bool { return old.URL == u.URL }) {
				return Settings{}, fmt.Errorf("%w: upstream URL %q is listed twice", ErrInvalidSettings, u.URL)
			}
			upstreams = append(upstreams, u)
		}
	}

	return s.changeSettings(ctx, func(settings *Settings) error {
		if update.Upstreams != nil {
			settings.Upstreams = upstreams
		}

		if update.Priority != nil {
			settings.Priority = *update.Priority
		}

		if update.LANPriority != nil {
			settings.LANPriority = *update.LANPriority
		}

		if update.LANCIDRs != nil {
			settings.LANCIDRs = slices.Clone(*update.LANCIDRs)
		}

		if update.MaxSize != nil {
			settings.MaxSize = *update.MaxSize
		}

		if update.KeepEvaluations != nil {
			settings.KeepEvaluations = *update.KeepEvaluations
		}

		if update.Pins != nil {
			settings.Pins = slices.Clone(*update.Pins)
		}

		return nil
	})
}

// AddUpstream adds u, or replaces the upstream with the same URL. The URL
// is stored without a trailing slash and the priority defaults to
// DefaultUpstreamPriority.
func (s *Store) AddUpstream(ctx context.Context, u Upstream) (Settings, error) {
	u, err := normalizeUpstream(u)
	if err != nil {
		return Settings{}, err
	}

	return s.changeSettings(ctx, func(settings *Settings) error {
		settings.Upstreams = slices.DeleteFunc(settings.Upstreams, func(old Upstream) bool { return old.URL == u.URL })
		settings.Upstreams = append(settings.Upstreams, u)

		return nil
	})
}

// normalizeUpstream checks u and returns it with its URL stored without a
// trailing slash and its priority defaulted to DefaultUpstreamPriority.
func normalizeUpstream(u Upstream) (Upstream, error) {
	u.URL = strings.TrimRight(u.URL, "/")
	if u.Priority == 0 {
		u.Priority = DefaultUpstreamPriority
	}

	for _, key := range u.PublicKeys {
		if _, err := narinfo.ParsePublicKey(key); err != nil {
			return Upstream{}, fmt.Errorf("%w: public key %q: %w", ErrInvalidSettings, key, err)
		}
	}

	if parsed, err := url.Parse(u.URL); err != nil || (parsed.Scheme != "http" && parsed.Scheme != "https") || parsed.Host == "" {
		return Upstream{}, fmt.Errorf("%w: upstream URL %q is not an http or https URL", ErrInvalidSettings, u.URL)
	}

	return u, nil
}

// RemoveUpstream removes the upstream with the given URL. It returns an
// error wrapping ErrNotFound when there is none.
func (s *Store) RemoveUpstream(ctx context.Context, upstreamURL string) (Settings, error) {
	upstreamURL = strings.TrimRight(upstreamURL, "/")

	return s.changeSettings(ctx, func(settings *Settings) error {
		n := len(settings.Upstreams)
		settings.Upstreams = slices.DeleteFunc(settings.Upstreams, func(old Upstream) bool { return old.URL == upstreamURL })

		if len(settings.Upstreams) == n {
			return fmt.Errorf("remove upstream %q: %w", upstreamURL, ErrNotFound)
		}

		return nil
	})
}

// changeSettings applies change to a copy of the current settings and
// stores the result. settingsMu makes concurrent changes apply one after
// the other.
func (s *Store) changeSettings(ctx context.Context, change func(*Settings) error) (Settings, error) {
	if err := ctx.Err(); err != nil {
		return Settings{}, err
	}

	s.settingsMu.Lock()
	defer s.settingsMu.Unlock()

	settings := cloneSettings(s.currentSettings().Settings)
	if err := change(&settings); err != nil {
		return Settings{}, err
	}

	if err := s.saveSettings(settings); err != nil {
		return Settings{}, err
	}

	s.logger.Info("cache settings changed", "upstreams", len(settings.Upstreams), "priority", settings.Priority,
		"lan_priority", settings.LANPriority, "max_size", settings.MaxSize)

	return cloneSettings(settings), nil
}
