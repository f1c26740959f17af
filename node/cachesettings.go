package node

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/gradient-ci/gradient/cache"
)

// applyCacheSettings makes the stored settings of store match the ones a
// configuration file sets, and logs each stored value it replaces, such
// as one changed through the API since the last start. Settings the file
// leaves out stay as stored.
//
// NOTE: cache.Store has no call that replaces all settings in one
// transaction, so this takes one call for the scalar settings and one per
// changed upstream. ParseConfigFile checks every value against the
// cache's rules first, so only a database error can stop it halfway, and
// then the node does not start.
func applyCacheSettings(ctx context.Context, store *cache.Store, file *CacheSettings, log *slog.Logger) error {
	stored := store.Settings()

	update := file.Update
	changed := false
	note := func(key string, storedValue, fileValue any) {
		changed = true
		log.Info("config file replaces stored cache setting", "key", key, "stored", storedValue, "config", fileValue)
	}
	if update.Priority != nil && *update.Priority != stored.Priority {
		note("priority", stored.Priority, *update.Priority)
	}
	if update.LANPriority != nil && *update.LANPriority != stored.LANPriority {
		note("lan_priority", stored.LANPriority, *update.LANPriority)
	}
	if update.LANCIDRs != nil && !slices.Equal(*update.LANCIDRs, stored.LANCIDRs) {
		note("lan_cidrs", stored.LANCIDRs, *update.LANCIDRs)
	}
	if update.MaxSize != nil && *update.MaxSize != stored.MaxSize {
		note("max_size", stored.MaxSize, *update.MaxSize)
	}
	if update.KeepEvaluations != nil && *update.KeepEvaluations != stored.KeepEvaluations {
		note("keep_evaluations", stored.KeepEvaluations, *update.KeepEvaluations)
	}
	if update.Pins != nil && !slices.Equal(*update.Pins, stored.Pins) {
		note("pins", stored.Pins, *update.Pins)
	}
	if changed {
		if _, err := store.UpdateSettings(ctx, update); err != nil {
			return fmt.Errorf("apply config file to cache %q: %w", mainCache, err)
		}
	}

	if file.Upstreams == nil {
		return nil
	}
	return applyUpstreams(ctx, store, stored.Upstreams, *file.Upstreams, log)
}

// applyUpstreams makes the upstream list equal to want. It removes first,
// so that the list never holds more upstreams than the cache allows.
func applyUpstreams(ctx context.Context, store *cache.Store, stored, want []cache.Upstream, log *slog.Logger) error {
	for _, old := range stored {
		if slices.ContainsFunc(want, func(u cache.Upstream) bool { return u.URL == old.URL }) {
			continue
		}
		log.Info("config file removes stored upstream", "url", old.URL)
		if _, err := store.RemoveUpstream(ctx, old.URL); err != nil {
			return fmt.Errorf("apply config file to cache %q: %w", mainCache, err)
		}
	}

	for _, u := range want {
		i := slices.IndexFunc(stored, func(old cache.Upstream) bool { return old.URL == u.URL })
		switch {
		case i < 0:
			log.Info("config file adds upstream", "url", u.URL, "priority", u.Priority)
		case stored[i].Priority != u.Priority || !slices.Equal(stored[i].PublicKeys, u.PublicKeys):
			log.Info("config file replaces stored upstream", "url", u.URL,
				"stored_priority", stored[i].Priority, "priority", u.Priority,
				"stored_keys", stored[i].PublicKeys, "keys", u.PublicKeys)
		default:
			continue
		}
		if _, err := store.AddUpstream(ctx, u); err != nil {
			return fmt.Errorf("apply config file to cache %q: %w", mainCache, err)
		}
	}
	return nil
}
