package node

import (
	"fmt"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

// loadHistory gives the scheduler the build time estimates that an
// earlier start of the node stored, so its first placements need not
// fall back to the default estimate.
func (d *driver) loadHistory() error {
	stored, err := d.db.BuildTimeEstimates()
	if err != nil {
		return fmt.Errorf("load build time estimates: %w", err)
	}
	entries := make([]scheduler.HistoryEntry, 0, len(stored))
	for _, e := range stored {
		entries = append(entries, scheduler.HistoryEntry{PName: e.PName, System: e.System, BuildTime: e.BuildTime, Samples: e.Samples})
	}
	d.sched.LoadHistory(entries)
	d.historySaved = d.now()
	if len(entries) > 0 {
		d.log.Info("build time estimates loaded", "entries", len(entries))
	}
	return nil
}

// saveHistory stores the scheduler's build time estimates. A failure is
// logged: the estimates are stored again at the next interval. Called on
// the Run goroutine.
func (d *driver) saveHistory() {
	d.historySaved = d.now()
	entries := d.sched.History()
	if len(entries) == 0 {
		return
	}
	stored := make([]db.BuildTimeEstimate, 0, len(entries))
	for _, e := range entries {
		stored = append(stored, db.BuildTimeEstimate{PName: e.PName, System: e.System, BuildTime: e.BuildTime, Samples: e.Samples})
	}
	if err := d.db.PutBuildTimeEstimates(stored); err != nil {
		d.log.Error("store build time estimates failed", "entries", len(stored), "err", err)
	}
}
