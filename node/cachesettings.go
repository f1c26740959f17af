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
// Every change goes into one write, so a failure leaves the stored
// settings as they were.
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
	if file.Upstreams != nil && noteUpstreamChanges(stored.Upstreams, *file.Upstreams, log) {
		changed = true
		update.Upstreams = file.Upstreams
	}
	if !changed {
		return nil
	}
	if _, err := store.UpdateSettings(ctx, update); err != nil {
		return fmt.Errorf("apply config file to cache %q: %w", mainCache, err)
	}
	return nil
}

// noteUpstreamChanges logs how the upstream list of a configuration file
// differs from the stored one and reports whether it differs.
func noteUpstreamChanges(stored, want []cache.Upstream, log *slog.Logger) bool {
	changed := false
	for _, old := range stored {
		if slices.ContainsFunc(want, func(u cache.Upstream) bool { return u.URL == old.URL }) {
			continue
		}
		log.Info("config file removes stored upstream", "url", old.URL)
		changed = true
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
		changed = true
	}
	return changed
}
