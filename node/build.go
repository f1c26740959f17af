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
// failure: the derivations after it depend on it. When jobCtx ends because
// the node shuts down, nothing is reported and the builds stay unfinished
// for the next start.
func (d *driver) runJob(jobCtx, nodeCtx context.Context, w protocol.Worker, a scheduler.Assign) {
	log := d.log.With("job_id", a.JobID, "worker_id", a.WorkerID)
	for _, drv := range a.DrvPaths {
		res, err := d.buildOne(jobCtx, w, drv)
		if nodeCtx.Err() != nil {
			return
		}
		if err != nil {
			log.Warn("build failed", "drv_path", drv, "err", err)
			msg := err.Error()
			var be *protocol.BuildError
			if errors.As(err, &be) {
				msg = be.Message
			}
			_ = d.post(nodeCtx, func(ctx context.Context) { d.derivationFailed(ctx, a.JobID, drv, msg) })
			break
		}
		log.Info("build succeeded", "drv_path", drv)
		_ = d.post(nodeCtx, func(ctx context.Context) { d.derivationBuilt(ctx, a.JobID, drv, res) })
	}
	_ = d.post(nodeCtx, func(ctx context.Context) {
		delete(d.jobs, a.JobID)
		decisions, err := d.sched.JobFinished(a.JobID, d.now())
		if err != nil {
			d.log.Error("scheduler rejected job end", "job_id", a.JobID, "err", err)
		}
		d.apply(ctx, decisions)
	})
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
