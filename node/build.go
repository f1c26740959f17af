package node

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// apply carries out scheduler decisions. Called on the Run goroutine.
func (d *driver) apply(ctx context.Context, decisions []scheduler.Decision) {
	for _, dec := range decisions {
		switch dec := dec.(type) {
		case scheduler.Assign:
			d.startJob(ctx, dec)
		case scheduler.Cancel:
			if cancel, ok := d.jobs[dec.JobID]; ok {
				cancel()
			}
		case scheduler.DependencyFailed:
			d.updateBuilds(dec.DrvPath, func(b *db.Build) {
				b.Status = db.BuildDependencyFailed
				b.FailedDependency = dec.FailedDep
				now := d.now().UTC()
				b.FinishedAt = &now
			})
		case scheduler.Waiting:
			d.log.Debug("derivation waiting", "drv_path", dec.DrvPath, "reason", dec.Reason)
		case scheduler.EvaluationDone:
			id, err := strconv.ParseUint(dec.EvalID, 10, 64)
			if err != nil {
				d.log.Error("scheduler finished an unknown evaluation", "evaluation_id", dec.EvalID)
				continue
			}
			if ae, ok := d.active[id]; ok {
				d.finishEvaluation(id, ae)
			}
		default:
			d.log.Error("unknown scheduler decision", "decision", fmt.Sprintf("%T", dec))
		}
	}
}

// updateBuilds applies fn to the build of drvPath in every active
// evaluation that contains it and stores the result. A derivation shared by
// evaluations is built once, so each of them records the same outcome.
func (d *driver) updateBuilds(drvPath string, fn func(b *db.Build)) {
	for _, ae := range d.active {
		b, ok := ae.builds[drvPath]
		if !ok || b.Status.Finished() {
			continue
		}
		fn(b)
		if err := d.db.PutBuild(*b); err != nil {
			d.log.Error("store build failed", "build_id", b.ID, "drv_path", drvPath, "err", err)
		}
	}
}

// startJob marks the job's builds as building and runs them on the worker
// in the background.
func (d *driver) startJob(ctx context.Context, a scheduler.Assign) {
	w, ok := d.workers[a.WorkerID]
	if !ok {
		d.log.Error("scheduler assigned a job to an unknown worker", "job_id", a.JobID, "worker_id", a.WorkerID)
		return
	}
	now := d.now().UTC()
	for _, drv := range a.DrvPaths {
		d.updateBuilds(drv, func(b *db.Build) {
			b.Status = db.BuildBuilding
			b.WorkerID = a.WorkerID
			b.StartedAt = &now
		})
	}
	d.log.Info("job assigned", "job_id", a.JobID, "worker_id", a.WorkerID, "derivations", len(a.DrvPaths),
		"drv_path", a.DrvPaths[0], "fetch_bytes", a.Score.FetchBytes, "candidates", a.Score.Candidates)

	jobCtx, cancel := context.WithCancel(ctx)
	d.jobs[a.JobID] = cancel
	d.goBackground(func() {
		defer cancel()
		d.runJob(jobCtx, ctx, w, a)
	})
}

// runJob builds the job's derivations in order and reports each result,
// then the end of the job, to the Run goroutine. It stops at the first
// failure: the derivations after it depend on it. Only a *BuildError, a
// builder that nix ran and that failed, fails a derivation. A worker that
// disconnected reports nothing: the hub's Left makes the scheduler queue
// the job again. Another fault of the worker ends the job, which costs the
// derivation an attempt. When jobCtx ends because the node shuts down,
// nothing is reported and the builds stay unfinished for the next start.
func (d *driver) runJob(jobCtx, nodeCtx context.Context, w protocol.Worker, a scheduler.Assign) {
	log := d.log.With("job_id", a.JobID, "worker_id", a.WorkerID)
	for _, drv := range a.DrvPaths {
		res, err := d.buildOne(jobCtx, w, drv)
		if nodeCtx.Err() != nil {
			return
		}
		var be *protocol.BuildError
		switch {
		case err == nil:
		case errors.As(err, &be):
			log.Warn("build failed", "drv_path", drv, "err", err)
			_ = d.post(nodeCtx, func(ctx context.Context) {
				d.workerFinishedBuild(a.WorkerID)
				d.derivationFailed(ctx, a.JobID, drv, be.Message)
			})
		case errors.Is(err, protocol.ErrWorkerGone):
			log.Warn("worker disconnected during the build; the job is queued again", "drv_path", drv, "err", err)
			_ = d.post(nodeCtx, func(context.Context) { delete(d.jobs, a.JobID) })
			return
		default:
			log.Warn("worker fault during the build; the job ends without a result", "drv_path", drv, "err", err)
			msg := err.Error()
			_ = d.post(nodeCtx, func(context.Context) { d.faults[drv] = msg })
		}
		if err != nil {
			break
		}
		log.Info("build succeeded", "drv_path", drv)
		_ = d.post(nodeCtx, func(ctx context.Context) {
			d.workerFinishedBuild(a.WorkerID)
			d.derivationBuilt(ctx, a.JobID, drv, res)
		})
	}
	_ = d.post(nodeCtx, func(ctx context.Context) {
		delete(d.jobs, a.JobID)
		decisions, err := d.sched.JobFinished(a.JobID, d.now())
		if errors.Is(err, scheduler.ErrUnknownJob) {
			// The worker left and the scheduler released the job already.
			d.log.Debug("job ended after its worker left", "job_id", a.JobID)
		} else if err != nil {
			d.log.Error("scheduler rejected job end", "job_id", a.JobID, "err", err)
		}
		d.apply(ctx, decisions)
	})
}

// workerFinishedBuild counts a finished build in the worker's record.
func (d *driver) workerFinishedBuild(workerID string) {
	d.updateWorkerRecord(workerID, func(r *db.Worker) { r.Builds++ })
}

// buildOne builds one derivation, writing its log to the log store. A
// fault of the worker, as opposed to a failing builder, is written to the
// log too, so the log of every failed build contains the reason.
func (d *driver) buildOne(ctx context.Context, w protocol.Worker, drvPath string) (protocol.BuildResult, error) {
	f, err := d.logs.Create(drvPath)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("create build log: %w", err)
	}
	defer f.Close()

	res, err := w.Build(ctx, protocol.BuildRequest{DrvPath: drvPath}, f, d.cache)
	if err != nil && !protocol.IsBuildError(err) && ctx.Err() == nil {
		fmt.Fprintf(f, "\ngradient: %v\n", err)
	}
	return res, err
}

func (d *driver) derivationBuilt(ctx context.Context, jobID, drvPath string, res protocol.BuildResult) {
	now := d.now().UTC()
	d.updateBuilds(drvPath, func(b *db.Build) {
		b.Status = db.BuildSucceeded
		b.FinishedAt = &now
		for name, info := range res.Outputs {
			if b.Outputs == nil {
				b.Outputs = map[string]string{}
			}
			b.Outputs[name] = info.StorePath
		}
	})
	decisions, err := d.sched.DerivationBuilt(jobID, drvPath, d.now())
	if errors.Is(err, scheduler.ErrUnknownJob) {
		// The worker left after it sent the result, and the scheduler
		// queued the derivation again. The outputs are in the cache, so
		// the late result counts, once: a later one finds it built.
		d.log.Info("late build result accepted", "job_id", jobID, "drv_path", drvPath)
		decisions, err = d.sched.PeerBuilt(drvPath, d.now()), nil
	}
	if err != nil {
		d.log.Error("scheduler rejected build result", "job_id", jobID, "drv_path", drvPath, "err", err)
	}
	d.apply(ctx, decisions)
}

func (d *driver) derivationFailed(ctx context.Context, jobID, drvPath, msg string) {
	now := d.now().UTC()
	d.updateBuilds(drvPath, func(b *db.Build) {
		b.Status = db.BuildFailed
		b.Error = msg
		b.FinishedAt = &now
	})
	decisions, err := d.sched.DerivationFailed(jobID, drvPath, msg, d.now())
	if err != nil {
		d.log.Error("scheduler rejected build failure", "job_id", jobID, "drv_path", drvPath, "err", err)
	}
	d.apply(ctx, decisions)
}
