package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// apply carries out scheduler decisions, then ends the evaluations whose
// builds the node failed, see endFailedByNode. Called on the Run goroutine.
func (d *driver) apply(ctx context.Context, decisions []scheduler.Decision) {
	for _, dec := range decisions {
		d.carryOut(ctx, dec)
	}
	if d.settling {
		return
	}
	d.settling = true
	defer func() { d.settling = false }()
	if d.cfg.UnsupportedTimeout < 0 {
		d.expireUnsupported(ctx)
	}
	d.endFailedByNode(ctx)
}

// carryOut carries out one scheduler decision.
func (d *driver) carryOut(ctx context.Context, dec scheduler.Decision) {
	switch dec := dec.(type) {
	case scheduler.Assign:
		d.startJob(ctx, dec)
	case scheduler.Cancel:
		if cancel, ok := d.jobs[dec.JobID]; ok {
			cancel()
		}
	case scheduler.GaveUp:
		msg := "gradient: no job built it: " + dec.Reason
		if fault := d.faults[dec.DrvPath]; fault != "" {
			msg += "; the last worker error was: " + fault
		}
		d.log.Warn("build failed: jobs kept ending without building it", "drv_path", dec.DrvPath, "reason", dec.Reason, "last_fault", d.faults[dec.DrvPath])
		now := d.now().UTC()
		d.updateBuilds(dec.DrvPath, func(b *db.Build) {
			b.Status = db.BuildFailed
			b.Error = msg
			b.FinishedAt = &now
		})
	case scheduler.DependencyFailed:
		d.updateBuilds(dec.DrvPath, func(b *db.Build) {
			b.Status = db.BuildDependencyFailed
			b.FailedDependency = dec.FailedDep
			now := d.now().UTC()
			b.FinishedAt = &now
		})
	case scheduler.Waiting:
		d.log.Debug("derivation waiting", "drv_path", dec.DrvPath, "reason", dec.Reason)
		switch dec.Reason {
		case scheduler.NoWorker:
			d.noteNoWorker(dec.DrvPath)
		case scheduler.HeldForWorker:
			d.buildHeld(dec.DrvPath, dec.Until)
		}
	case scheduler.HoldEnded:
		d.holdEnded(dec)
	case scheduler.EvaluationDone:
		id, err := strconv.ParseUint(dec.EvalID, 10, 64)
		if err != nil {
			d.log.Error("scheduler finished an unknown evaluation", "evaluation_id", dec.EvalID)
			return
		}
		if ae, ok := d.active[id]; ok {
			d.finishEvaluation(id, ae)
		}
	default:
		d.log.Error("unknown scheduler decision", "decision", fmt.Sprintf("%T", dec))
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

// startJob records the job's placement with its builds and runs them on
// the worker in the background. Each build is marked building when it
// starts, so the later links of a chain stay queued until then. A job
// whose first derivation the node failed already, because no worker could
// build it in time, is reported failed to the scheduler without running.
func (d *driver) startJob(ctx context.Context, a scheduler.Assign) {
	link, ok := d.links[a.WorkerID]
	if !ok {
		d.log.Error("scheduler assigned a job to an unknown worker", "job_id", a.JobID, "worker_id", a.WorkerID)
		return
	}
	if msg := d.failedByNode(a.DrvPaths[0]); msg != "" {
		d.log.Info("job not run: its derivation failed already", "job_id", a.JobID, "drv_path", a.DrvPaths[0])
		decisions, err := d.sched.DerivationFailed(a.JobID, a.DrvPaths[0], msg, d.now())
		if err != nil {
			d.log.Error("scheduler rejected build failure", "job_id", a.JobID, "drv_path", a.DrvPaths[0], "err", err)
		}
		more, err := d.sched.JobFinished(a.JobID, d.now())
		if err != nil {
			d.log.Error("scheduler rejected job end", "job_id", a.JobID, "err", err)
		}
		d.apply(ctx, append(decisions, more...))
		return
	}

	placement := &db.Placement{
		JobID:         a.JobID,
		WorkerID:      a.WorkerID,
		Links:         len(a.DrvPaths),
		FetchBytes:    a.Score.FetchBytes,
		FetchSeconds:  a.Score.FetchSeconds,
		BuildSeconds:  a.Score.BuildSeconds,
		Speed:         a.Score.Speed,
		Total:         a.Score.Total,
		Urgent:        a.Score.Urgent,
		Exclusive:     a.Score.Exclusive,
		Candidates:    a.Score.Candidates,
		RunnerUp:      a.Score.RunnerUp,
		RunnerUpTotal: a.Score.RunnerUpTotal,
		AssignedAt:    d.now().UTC(),
	}
	for _, drv := range a.DrvPaths {
		d.updateBuilds(drv, func(b *db.Build) { b.Placement = placement })
	}
	d.log.Info("job assigned", "job_id", a.JobID, "worker_id", a.WorkerID, "derivations", len(a.DrvPaths),
		"drv_path", a.DrvPaths[0], "fetch_bytes", a.Score.FetchBytes, "candidates", a.Score.Candidates)

	// A shutdown of the node does not cancel the job: the hub closes the
	// connection to the worker instead, which lets the build go on there,
	// so that the job offered again after a restart finds it done. Only a
	// Cancel decision aborts the build.
	jobCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	d.jobs[a.JobID] = cancel
	d.goBackground(func() {
		defer cancel()
		d.runJob(jobCtx, ctx, link, a)
	})
}

// buildRequeued marks the builds of drvPath that were building on
// workerID as queued again, after the worker was removed. Called on the
// Run goroutine.
func (d *driver) buildRequeued(drvPath, workerID string) {
	d.updateBuilds(drvPath, func(b *db.Build) {
		if b.Status == db.BuildBuilding && b.WorkerID == workerID {
			b.Status = db.BuildQueued
			b.StartedAt = nil
			b.WorkerID = ""
			// Keep a typed wait, such as no worker until a deadline,
			// after the reason for the requeue.
			left := "queued again: worker " + workerID + " left during the build"
			switch {
			case b.WaitingReason == "" || b.Waiting == "":
				b.Waiting = left
			case !strings.HasPrefix(b.Waiting, left):
				b.Waiting = left + "; " + b.Waiting
			}
		}
	})
}

// linkStopped puts the records of a chain link that was stopped because
// the link before it did not complete back to queued, unless the
// scheduler's decisions moved them on already. Called on the Run
// goroutine.
func (d *driver) linkStopped(drvPath, workerID string) {
	d.updateBuilds(drvPath, func(b *db.Build) {
		if b.Status == db.BuildBuilding && b.WorkerID == workerID {
			b.Status = db.BuildQueued
			b.StartedAt = nil
			b.WorkerID = ""
			b.Waiting = ""
		}
	})
}

// buildHeld notes in the records of a derivation that the scheduler holds
// it for the worker that was building it before the node restarted.
// Called on the Run goroutine.
func (d *driver) buildHeld(drvPath string, until time.Time) {
	st, _ := d.sched.Status(drvPath)
	d.log.Info("build held for the worker that was building it before the restart",
		"drv_path", drvPath, "worker_id", st.HeldFor, "until", until)
	waiting := fmt.Sprintf("the node restarted during the build: waiting until %s for worker %s, which may still be building it, to reconnect",
		until.UTC().Format(time.RFC3339), st.HeldFor)
	d.updateBuilds(drvPath, func(b *db.Build) { b.Waiting = waiting })
}

// holdEnded marks the builds of a derivation that the scheduler held for
// a worker as queued again. Called on the Run goroutine.
func (d *driver) holdEnded(dec scheduler.HoldEnded) {
	waiting := "queued again: worker " + dec.WorkerID + " reconnected without the build it ran before the node restarted"
	if dec.Expired {
		waiting = "queued again: worker " + dec.WorkerID + " did not reconnect within its lease after the node restarted"
	}
	d.log.Info("build no longer held for its worker; it goes to any worker", "drv_path", dec.DrvPath, "worker_id", dec.WorkerID, "expired", dec.Expired)
	d.updateBuilds(dec.DrvPath, func(b *db.Build) {
		if b.Status == db.BuildBuilding && b.WorkerID == dec.WorkerID {
			b.Status = db.BuildQueued
			b.WorkerID = ""
			b.StartedAt = nil
			b.Waiting = waiting
		}
	})
}

// buildStarted marks a derivation's builds as building on a worker.
// Called on the Run goroutine.
func (d *driver) buildStarted(jobID, workerID, drvPath string, first bool) {
	now := d.now()
	if first {
		if err := d.sched.JobStarted(jobID, now); err != nil {
			d.log.Debug("job started after the scheduler released it", "job_id", jobID, "err", err)
		}
	}
	started := now.UTC()
	d.updateBuilds(drvPath, func(b *db.Build) {
		b.Status = db.BuildBuilding
		b.WorkerID = workerID
		b.StartedAt = &started
		b.FinishedAt = nil
		b.Waiting = ""
	})
}

// runJob builds the job's derivations in order and reports each result,
// then the end of the job, to the Run goroutine. It stops at the first
// failure: the derivations after it depend on it. Only a *BuildError, a
// builder that nix ran and that failed, fails a derivation. When the
// worker's connection drops, the build is offered again once the worker
// reconnects, which completes it from its store or from the build that
// went on. A worker that is removed instead reports nothing: the
// scheduler queues the job again. A worker that declines a build is offered it again after
// a delay, because the scheduler counts the job's slot as taken. Another
// fault of the worker ends the job, which costs the derivation an attempt.
// When the node shuts down, nothing is reported and the builds stay
// unfinished for the next start. jobCtx ends only when the job is
// cancelled.
//
// A link starts as soon as the worker reports the one before it built,
// while that one's outputs still upload to the cache: its input is in
// the worker's store already. Results are still reported in order, each
// once its upload ended, so dependents on other workers find the outputs
// in the cache. A link that fails stops the one after it.
func (d *driver) runJob(jobCtx, nodeCtx context.Context, link *workerLink, a scheduler.Assign) {
	log := d.log.With("job_id", a.JobID, "worker_id", a.WorkerID)
	linksCtx, stopLinks := context.WithCancel(jobCtx)
	defer stopLinks()

	var next *runningLink
	current := d.startLink(linksCtx, nodeCtx, log, link, a, 0)
	for i, drv := range a.DrvPaths {
		hasNext := i+1 < len(a.DrvPaths)
		var r linkResult
		if hasNext {
			select {
			case <-current.built:
				next = d.startLink(linksCtx, nodeCtx, log, link, a, i+1)
				r = <-current.done
			case r = <-current.done:
			}
		} else {
			r = <-current.done
		}
		if nodeCtx.Err() != nil {
			return
		}
		if !d.reportLink(nodeCtx, log, link, a, drv, r) {
			break
		}
		if hasNext && next == nil {
			next = d.startLink(linksCtx, nodeCtx, log, link, a, i+1)
		}
		current, next = next, nil
	}
	if next != nil {
		// The link after a failure was started already: stop it, and
		// wait so that its result cannot come after the job's end. Its
		// record no longer shows it building there.
		stopLinks()
		<-next.done
		_ = d.post(nodeCtx, func(context.Context) { d.linkStopped(next.drvPath, a.WorkerID) })
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

// runningLink is the build of one link of a job.
type runningLink struct {
	drvPath string
	// built is closed when the worker reports the outputs built, which
	// workers before JobBuilt never do.
	built chan struct{}
	done  chan linkResult
}

type linkResult struct {
	res protocol.BuildResult
	err error
}

// startLink starts building link i of job a on the worker of link.
func (d *driver) startLink(ctx, nodeCtx context.Context, log *slog.Logger, link *workerLink, a scheduler.Assign, i int) *runningLink {
	drv := a.DrvPaths[i]
	_ = d.post(nodeCtx, func(context.Context) { d.buildStarted(a.JobID, a.WorkerID, drv, i == 0) })
	d.mesh.buildStarted(nodeCtx, drv, jobETA(a))

	l := &runningLink{drvPath: drv, built: make(chan struct{}), done: make(chan linkResult, 1)}
	sink := &builtSink{Store: d.cache, built: l.built}
	go func() {
		res, err := d.buildOnLink(ctx, nodeCtx, log, link, drv, sink)
		l.done <- linkResult{res, err}
	}()
	return l
}

// builtSink is the cache as the NARSink of one build. It closes built
// when the worker reports the outputs built.
type builtSink struct {
	*cache.Store
	built chan struct{}
	once  sync.Once
}

func (s *builtSink) OutputsBuilt() { s.once.Do(func() { close(s.built) }) }

// reportLink reports the result r of the link drvPath of job a and
// returns whether the job goes on with its next link.
func (d *driver) reportLink(nodeCtx context.Context, log *slog.Logger, link *workerLink, a scheduler.Assign, drv string, r linkResult) bool {
	res, err := r.res, r.err
	d.mesh.buildEnded(nodeCtx, drv, meshBuildEvent(err), outputsByName(res))
	var be *protocol.BuildError
	switch {
	case err == nil:
		log.Info("build succeeded", "drv_path", drv)
		_ = d.post(nodeCtx, func(ctx context.Context) {
			d.workerFinishedBuild(a.WorkerID)
			d.derivationBuilt(ctx, a.JobID, drv, res)
		})
		return true
	case errors.As(err, &be):
		log.Warn("build failed", "drv_path", drv, "err", err)
		_ = d.post(nodeCtx, func(ctx context.Context) {
			d.workerFinishedBuild(a.WorkerID)
			d.derivationFailed(ctx, a.JobID, drv, be.Message)
		})
	case errors.Is(err, protocol.ErrWorkerGone):
		log.Warn("worker removed during the build; the job is queued again", "drv_path", drv, "err", err)
		_ = d.post(nodeCtx, func(context.Context) {
			delete(d.jobs, a.JobID)
			d.buildRequeued(drv, a.WorkerID)
		})
	default:
		log.Warn("worker fault during the build; the job ends without a result", "drv_path", drv, "err", err)
		msg := err.Error()
		_ = d.post(nodeCtx, func(context.Context) { d.faults[drv] = msg })
		if errors.Is(err, protocol.ErrWorkerFault) {
			d.restWorker(nodeCtx, link)
		}
	}
	return false
}

// restWorker keeps the scheduler from giving the worker of link new jobs
// for driverConfig.FaultRest, by reserving all its slots.
func (d *driver) restWorker(ctx context.Context, link *workerLink) {
	slots := link.hello.MaxJobs
	d.log.Warn("worker could not start nix; it gets no new jobs for a while", "worker_id", link.id, "rest", d.cfg.FaultRest)
	d.reservations.add(link.id, slots)
	_ = d.post(ctx, d.syncReservations)
	time.AfterFunc(d.cfg.FaultRest, func() {
		d.reservations.add(link.id, -slots)
		_ = d.post(ctx, d.syncReservations)
	})
}

// buildOnLink builds one derivation on the worker of link. When the
// worker's connection drops, it waits for the worker to reconnect and
// offers the build again. It returns an error wrapping
// protocol.ErrWorkerGone once the worker is removed. The build runs on
// jobCtx; the waits between offers end with nodeCtx too.
func (d *driver) buildOnLink(jobCtx, nodeCtx context.Context, log *slog.Logger, link *workerLink, drvPath string, sink protocol.NARSink) (protocol.BuildResult, error) {
	waitCtx, cancel := context.WithCancel(jobCtx)
	defer cancel()
	defer context.AfterFunc(nodeCtx, cancel)()

	var stale *protocol.RemoteWorker
	for {
		w, err := link.worker(waitCtx, stale)
		if errors.Is(err, errWorkerRemoved) {
			return protocol.BuildResult{}, fmt.Errorf("worker %q: %w", link.id, protocol.ErrWorkerGone)
		}
		if err != nil {
			return protocol.BuildResult{}, err
		}

		res, err := d.buildRetryingDeclines(jobCtx, waitCtx, log, w, link.id, drvPath, sink)
		if !errors.Is(err, protocol.ErrWorkerGone) {
			return res, err
		}
		stale = w
		if w.Dropped() {
			log.Info("connection to the worker dropped during the build; offering it again if the worker reconnects within its lease",
				"drv_path", drvPath, "err", err)
		}
	}
}

// buildRetryingDeclines builds one derivation on w, offering the build
// again after a growing delay each time the worker declines it. The
// build runs on ctx, and the delays end with waitCtx.
func (d *driver) buildRetryingDeclines(ctx, waitCtx context.Context, log *slog.Logger, w protocol.Worker, workerID, drvPath string, sink protocol.NARSink) (protocol.BuildResult, error) {
	delay := d.cfg.RetryDelay
	for attempt := 1; ; attempt++ {
		res, err := d.buildOne(ctx, w, workerID, drvPath, attempt, sink)
		if !errors.Is(err, protocol.ErrJobDeclined) {
			return res, err
		}
		// NOTE: declines are retried for as long as the worker stays
		// connected. A worker declines only while its own count of busy
		// slots disagrees with the scheduler's, which ends when its
		// running jobs end.
		log.Info("worker declined the build; offering it again", "drv_path", drvPath, "attempt", attempt, "delay", delay, "err", err)
		if err := sleepContext(waitCtx, delay); err != nil {
			return protocol.BuildResult{}, err
		}
		delay = min(2*delay, maxRetryDelay)
	}
}

// sleepContext waits for d or until ctx ends, and returns ctx's error in
// the latter case.
func sleepContext(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// workerFinishedBuild counts a finished build in the worker's record.
func (d *driver) workerFinishedBuild(workerID string) {
	d.updateWorkerRecord(workerID, func(r *db.Worker) { r.Builds++ })
}

// buildOne builds one derivation, appending its log to the log store
// after a line that names the attempt. A fault of the worker, as opposed
// to a failing builder, is written to the log too, so the log of every
// failed build contains the reason.
func (d *driver) buildOne(ctx context.Context, w protocol.Worker, workerID, drvPath string, attempt int, sink protocol.NARSink) (protocol.BuildResult, error) {
	f, err := d.logs.Open(drvPath, d.now(), workerID)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("open build log: %w", err)
	}
	defer f.Close()

	res, err := w.Build(ctx, protocol.BuildRequest{DrvPath: drvPath}, f, sink)
	if err != nil && !protocol.IsBuildError(err) && ctx.Err() == nil {
		fmt.Fprintf(f, "\ngradient: %v\n", err)
	}
	return res, err
}

func (d *driver) derivationBuilt(ctx context.Context, jobID, drvPath string, res protocol.BuildResult) {
	now := d.now().UTC()
	var size uint64
	for _, info := range res.Outputs {
		size += info.NarSize
	}
	d.updateBuilds(drvPath, func(b *db.Build) {
		b.Status = db.BuildSucceeded
		b.FinishedAt = &now
		b.OutputSize = size
		for name, info := range res.Outputs {
			if b.Outputs == nil {
				b.Outputs = map[string]string{}
			}
			b.Outputs[name] = info.StorePath
		}
	})
	// The graph carried size 0 for outputs not built yet; the real size
	// lets the scheduler count the fetch when it places the dependents.
	d.sched.SetOutputSize(drvPath, size)
	decisions, err := d.sched.DerivationBuilt(jobID, drvPath, d.now())
	if errors.Is(err, scheduler.ErrUnknownJob) {
		// The worker left after it sent the result, and the scheduler
		// queued the derivation again. The outputs are in the cache, so
		// the late result counts, once: a later one finds it built.
		d.log.Debug("late build result accepted", "job_id", jobID, "drv_path", drvPath)
		decisions, err = d.sched.PeerBuilt(drvPath, d.now()), nil
	}
	if err != nil {
		d.log.Error("scheduler rejected build result", "job_id", jobID, "drv_path", drvPath, "err", err)
	}
	d.apply(ctx, decisions)
}

func (d *driver) derivationFailed(ctx context.Context, jobID, drvPath, msg string) {
	decisions, err := d.sched.DerivationFailed(jobID, drvPath, msg, d.now())
	if errors.Is(err, scheduler.ErrUnknownJob) {
		// The worker left after it sent the failure, and the scheduler
		// queued the derivation again, so the build record waits for
		// that build.
		d.log.Debug("late build failure ignored: the derivation is queued again", "job_id", jobID, "drv_path", drvPath)
		return
	}
	if err != nil {
		d.log.Error("scheduler rejected build failure", "job_id", jobID, "drv_path", drvPath, "err", err)
	}
	now := d.now().UTC()
	d.updateBuilds(drvPath, func(b *db.Build) {
		b.Status = db.BuildFailed
		b.Error = msg
		b.FinishedAt = &now
	})
	d.apply(ctx, decisions)
}
