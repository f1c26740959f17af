package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

// DefaultUnsupportedTimeout is how long a build waits for a worker with
// its system and required features before it fails, unless
// Config.UnsupportedTimeout sets another time. Hydra's queue runner has the
// same rule, max_unsupported_time, where it is off by default.
const DefaultUnsupportedTimeout = 5 * time.Minute

// noteNoWorker starts the wait of a derivation that no connected worker can
// build. Called on the Run goroutine.
func (d *driver) noteNoWorker(drvPath string) {
	if _, ok := d.unsupported[drvPath]; ok {
		return
	}
	d.unsupported[drvPath] = d.now()
	system, features := d.platform(drvPath)
	timeout := max(d.cfg.UnsupportedTimeout, 0)
	// Right after a start, or with no worker at all, the workers may
	// still be reconnecting: that is no reason for a warning.
	log := d.log.Warn
	if len(d.links) == 0 || d.now().Sub(d.started) < d.cfg.WorkerLease {
		log = d.log.Info
	}
	log("no connected worker has the system and features of a derivation; it fails unless such a worker connects in time",
		"drv_path", drvPath, "system", system, "features", strings.Join(features, ","), "timeout", timeout)

	wait := d.noWorkerWait(drvPath)
	d.updateBuilds(drvPath, func(b *db.Build) { b.SetWait(wait) })
}

// platform returns the system and required features of a derivation, from
// its build record in any active evaluation.
func (d *driver) platform(drvPath string) (system string, features []string) {
	for _, ae := range d.active {
		if b, ok := ae.builds[drvPath]; ok {
			return b.System, b.Features
		}
	}
	return "", nil
}

// unsupportedMessage is the error of a build that no worker could run.
func unsupportedMessage(system string, features []string) string {
	if len(features) == 0 {
		return fmt.Sprintf("no worker for system %s: connect a worker that has it, then evaluate again", system)
	}
	return fmt.Sprintf("no worker for system %s with features [%s]: connect a worker that has them, then evaluate again",
		system, strings.Join(features, ","))
}

// expireUnsupported fails each derivation that waited for a worker with
// its system and features for longer than the timeout, and stops tracking
// those that a worker can build by now. Called on the Run goroutine.
func (d *driver) expireUnsupported(ctx context.Context) {
	d.pruneUnsupported()
	now := d.now()
	var expired []string
	for drvPath, since := range d.unsupported {
		if d.cfg.UnsupportedTimeout < 0 || now.Sub(since) >= d.cfg.UnsupportedTimeout {
			expired = append(expired, drvPath)
		}
	}
	if len(expired) == 0 {
		return
	}

	slices.Sort(expired)
	for _, drvPath := range expired {
		delete(d.unsupported, drvPath)
		d.failUnsupported(drvPath, now)
	}
	d.endFailedByNode(ctx)
}

// pruneUnsupported ends the wait of each derivation that a connected
// worker can build by now, or that is no longer queued. Called on the Run
// goroutine.
func (d *driver) pruneUnsupported() {
	for drvPath := range d.unsupported {
		st, ok := d.sched.Status(drvPath)
		if !ok || st.State != scheduler.StateReady || st.Reason != scheduler.NoWorker {
			delete(d.unsupported, drvPath)
			d.updateBuilds(drvPath, func(b *db.Build) { b.SetWait(db.Wait{}) })
		}
	}
}

// failUnsupported records a derivation as failed because no worker can
// build it, and its dependents as dependency failed, in every active
// evaluation. The scheduler keeps the derivation queued, so the driver
// ends these evaluations itself, see endFailedByNode.
func (d *driver) failUnsupported(drvPath string, now time.Time) {
	system, features := d.platform(drvPath)
	msg := unsupportedMessage(system, features)
	finished := now.UTC()
	for _, ae := range d.active {
		b, ok := ae.builds[drvPath]
		if !ok || b.Status.Finished() {
			continue
		}
		b.Status = db.BuildFailed
		b.Error = msg
		b.FinishedAt = &finished
		// A worker that ran the build before it left did not fail it.
		b.WorkerID = ""
		b.SetWait(db.Wait{})
		d.putBuild(b)
		ae.failedByNode = true
		d.failDependents(ae, drvPath, finished)
	}
	d.log.Warn("build failed: no worker has its system and features", "drv_path", drvPath,
		"system", system, "features", strings.Join(features, ","))
}

// failDependents marks every unfinished transitive dependent of failed in
// ae as dependency failed.
func (d *driver) failDependents(ae *activeEval, failed string, now time.Time) {
	dependents := map[string][]*db.Build{}
	for _, b := range ae.builds {
		for _, in := range b.InputDrvs {
			dependents[in] = append(dependents[in], b)
		}
	}
	queue := []string{failed}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, b := range dependents[next] {
			if b.Status.Finished() {
				continue
			}
			b.Status = db.BuildDependencyFailed
			b.FailedDependency = failed
			b.FinishedAt = &now
			d.putBuild(b)
			queue = append(queue, b.DrvPath)
		}
	}
}

// endFailedByNode ends each evaluation that has builds the node failed and
// whose builds are now all finished: it stores the evaluation's result and
// drops it from the scheduler, which would wait for those builds forever.
// Called on the Run goroutine.
func (d *driver) endFailedByNode(ctx context.Context) {
	var done []uint64
	for id, ae := range d.active {
		if !ae.failedByNode {
			continue
		}
		all := true
		for _, b := range ae.builds {
			all = all && b.Status.Finished()
		}
		if all {
			done = append(done, id)
		}
	}
	slices.Sort(done)
	for _, id := range done {
		// Applying the decisions of an earlier CancelEvaluation may have
		// finished this evaluation already.
		ae, ok := d.active[id]
		if !ok {
			continue
		}
		d.finishEvaluation(id, ae)
		decisions, err := d.sched.CancelEvaluation(db.FormatID(id), d.now())
		if err != nil {
			d.log.Error("scheduler could not drop a finished evaluation", "evaluation_id", id, "err", err)
			continue
		}
		d.apply(ctx, decisions)
	}
}

// failedByNode returns the error of a derivation that the node failed while
// the scheduler still held it, and "" for any other. Every build record of
// it is then final.
func (d *driver) failedByNode(drvPath string) string {
	msg := ""
	for _, ae := range d.active {
		b, ok := ae.builds[drvPath]
		if !ok {
			continue
		}
		if b.Status != db.BuildFailed || !ae.failedByNode {
			return ""
		}
		msg = b.Error
	}
	return msg
}

// putBuild stores a build record, logging a failure.
func (d *driver) putBuild(b *db.Build) {
	if err := d.db.PutBuild(*b); err != nil {
		d.log.Error("store build failed", "build_id", b.ID, "drv_path", b.DrvPath, "err", err)
	}
}
