package node

import (
	"context"
	"fmt"

	"github.com/gradient-ci/gradient/internal/db"
)

// resume picks up the evaluations that a previous run of the node left
// unfinished, for example after kill -9. An evaluation that had not
// produced its graph is evaluated again. One that was building gets its
// graph back, and builds whose input failed before the restart are marked
// dependency failed. A build that was running on a remote worker is held
// for that worker for its lease, see heldWorker, and other builds that
// were running are queued again.
func (d *driver) resume(ctx context.Context) error {
	evals, err := d.db.ListUnfinishedEvaluations()
	if err != nil {
		return fmt.Errorf("list unfinished evaluations: %w", err)
	}
	for _, e := range evals {
		log := d.log.With("evaluation_id", e.ID)
		switch e.Status {
		case db.EvalQueued, db.EvalEvaluating:
			log.Info("resuming evaluation", "status", e.Status)
			d.startEvaluation(ctx, e.ID)
		case db.EvalBuilding:
			builds, err := d.db.ListBuilds(e.ID)
			if err != nil {
				return fmt.Errorf("list builds of evaluation %d: %w", e.ID, err)
			}
			requeued, held := d.resetBuilds(builds)
			log.Info("resuming builds", "builds", len(builds), "requeued", requeued, "held", held)
			d.addGraph(ctx, e, builds)
		}
	}
	return nil
}

// resetBuilds queues builds that were running again, except those held
// for their worker, and marks the dependents of failed builds, storing
// every change. It returns how many builds it queued again and how many
// it left building for their worker.
func (d *driver) resetBuilds(builds []db.Build) (requeued, held int) {
	byDrv := make(map[string]*db.Build, len(builds))
	for i := range builds {
		byDrv[builds[i].DrvPath] = &builds[i]
	}

	// failedInput returns the failed derivation that b transitively
	// depends on, or "" when there is none.
	memo := map[string]string{}
	var failedInput func(b *db.Build) string
	failedInput = func(b *db.Build) string {
		if v, ok := memo[b.DrvPath]; ok {
			return v
		}
		memo[b.DrvPath] = ""
		for _, in := range b.InputDrvs {
			ib, ok := byDrv[in]
			if !ok {
				continue
			}
			if ib.Status == db.BuildFailed {
				memo[b.DrvPath] = ib.DrvPath
				return ib.DrvPath
			}
			if ib.Status == db.BuildDependencyFailed {
				memo[b.DrvPath] = ib.FailedDependency
				return ib.FailedDependency
			}
			if f := failedInput(ib); f != "" {
				memo[b.DrvPath] = f
				return f
			}
		}
		return ""
	}

	now := d.now().UTC()
	for i := range builds {
		b := &builds[i]
		if b.Status.Finished() {
			continue
		}
		if f := failedInput(b); f != "" {
			b.Status = db.BuildDependencyFailed
			b.FailedDependency = f
			b.FinishedAt = &now
		} else if d.heldWorker(b) != "" {
			held++
			continue
		} else if b.Status == db.BuildBuilding {
			b.Status = db.BuildQueued
			b.WorkerID = ""
			b.StartedAt = nil
			requeued++
		} else {
			continue
		}
		if err := d.db.PutBuild(*b); err != nil {
			d.log.Error("store build failed", "build_id", b.ID, "err", err)
		}
	}
	return requeued, held
}

// heldWorker returns the worker that a build still recorded as building
// ran on before the node restarted, when the scheduler should hold the
// build for it, and "" otherwise. A remote worker keeps such a build
// running after its connection ended, so giving it to another worker
// would run the builder twice. The in-process worker's builds ended with
// the node's process, and without a lease nothing waits for a worker.
func (d *driver) heldWorker(b *db.Build) string {
	if b.Status != db.BuildBuilding || d.cfg.WorkerLease <= 0 || b.WorkerID == localWorkerID {
		return ""
	}
	return b.WorkerID
}
