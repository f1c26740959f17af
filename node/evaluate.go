package node

import (
	"context"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"
	"sync"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// startEvaluation runs the evaluation in the background once an
// evaluation slot is free. Called on the Run goroutine.
func (d *driver) startEvaluation(ctx context.Context, evalID uint64) {
	d.goBackground(func() {
		select {
		case d.evalSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-d.evalSlots }()
		d.evaluate(ctx, evalID)
	})
}

// evaluate runs one evaluation on the connected workers that evaluate,
// stores its entry points and build records, and hands the graph to the
// Run goroutine. It waits, queued, until such a worker connects. It runs
// in its own goroutine and writes only the records of this evaluation,
// which no other goroutine touches until the graph is handed over.
func (d *driver) evaluate(ctx context.Context, evalID uint64) {
	log := d.log.With("evaluation_id", evalID)
	e, err := d.db.GetEvaluation(evalID)
	if err != nil {
		log.Error("load evaluation failed", "err", err)
		return
	}
	if d.evalPool.size() == 0 {
		e.Waiting = "waiting for a worker that can evaluate: " + d.cfg.NoEvalWorkerReason
		log.Warn("evaluation queued: no connected worker evaluates", "reason", d.cfg.NoEvalWorkerReason)
		if err := d.db.PutEvaluation(e); err != nil {
			log.Error("store evaluation failed", "err", err)
		}
	}
	if _, err := d.evalPool.wait(ctx); err != nil {
		log.Info("evaluation interrupted; it resumes on the next start")
		return
	}

	now := d.now().UTC()
	e.Status = db.EvalEvaluating
	e.Waiting = ""
	e.StartedAt = &now
	if err := d.db.PutEvaluation(e); err != nil {
		log.Error("store evaluation failed", "err", err)
		return
	}
	log.Info("evaluation started", "org", e.Org, "project", e.Project, "flake", e.FlakeRef)

	progress := &logLineWriter{log: log, msg: "evaluation progress"}
	res, err := d.runEvaluation(ctx, log, protocol.EvalRequest{FlakeRef: e.FlakeRef, EntryPoints: e.EntryPoints}, progress)
	if ctx.Err() != nil {
		log.Info("evaluation interrupted; it resumes on the next start")
		return
	}
	if err != nil {
		log.Warn("evaluation failed", "err", err)
		d.failEvaluation(e, err.Error())
		return
	}

	builds, err := d.recordGraph(ctx, &e, res)
	if err != nil {
		log.Error("store evaluation result failed", "err", err)
		d.failEvaluation(e, "store evaluation result: "+err.Error())
		return
	}
	log.Info("evaluation finished", "entry_points", len(e.Results), "derivations", len(builds))

	reports := d.queryStoresBefore(ctx, builds)
	_ = d.post(ctx, func(ctx context.Context) { d.addReportedGraph(ctx, e, builds, reports) })
}

// recordGraph creates the build records of an evaluation result, one per
// derivation, and stores the entry points with their build IDs. A
// derivation whose outputs are all in the cache is recorded as cached.
func (d *driver) recordGraph(ctx context.Context, e *db.Evaluation, res protocol.EvalResult) ([]db.Build, error) {
	var outputs []string
	for _, drv := range res.Derivations {
		for _, p := range drv.Outputs {
			if p != "" {
				outputs = append(outputs, p)
			}
		}
	}
	missing, err := d.cache.Missing(ctx, outputs)
	if err != nil {
		return nil, fmt.Errorf("look up outputs in the cache: %w", err)
	}
	isMissing := make(map[string]bool, len(missing))
	for _, p := range missing {
		isMissing[p] = true
	}

	sizes := d.narSizes(ctx, outputs, isMissing)
	now := d.now().UTC()
	builds := make([]db.Build, 0, len(res.Derivations))
	for _, drv := range res.Derivations {
		status := db.BuildCached
		for _, p := range drv.Outputs {
			// A content-addressed output has no path before it is built.
			if p == "" || isMissing[p] {
				status = db.BuildQueued
			}
		}
		if len(drv.Outputs) == 0 {
			status = db.BuildQueued
		}
		b := db.Build{
			DrvPath:   drv.DrvPath,
			Name:      drv.Name,
			System:    drv.System,
			Features:  drv.RequiredSystemFeatures,
			InputDrvs: drv.InputDrvs,
			Outputs:   drv.Outputs,
			Status:    status,
			CreatedAt: now,
		}
		b.ParallelBuilding = drv.ParallelBuilding
		if status == db.BuildCached {
			b.FinishedAt = &now
			for _, p := range drv.Outputs {
				b.OutputSize += sizes[p]
			}
		}
		builds = append(builds, b)
	}

	// Builds left by an earlier, interrupted run of this evaluation are
	// replaced, so every derivation has one build record.
	if err := d.db.DeleteBuilds(e.ID); err != nil {
		return nil, err
	}
	if err := d.db.CreateBuilds(e.ID, builds); err != nil {
		return nil, err
	}

	buildIDs := make(map[string]uint64, len(builds))
	for _, b := range builds {
		buildIDs[b.DrvPath] = b.ID
	}
	e.Flake = res.Flake
	e.Results = make([]db.EntryPointResult, 0, len(res.EntryPoints))
	for _, ep := range res.EntryPoints {
		e.Results = append(e.Results, db.EntryPointResult{
			Attr:      ep.Attr,
			DrvPath:   ep.DrvPath,
			EvalError: ep.Error,
			BuildID:   buildIDs[ep.DrvPath],
		})
	}
	e.Status = db.EvalBuilding
	return builds, d.db.PutEvaluation(*e)
}

// narSizes returns the NarSize of each path of outputs that the cache
// holds, from its narinfo. A narinfo that cannot be read leaves its path
// out: the size only improves the scheduler's estimates.
func (d *driver) narSizes(ctx context.Context, outputs []string, isMissing map[string]bool) map[string]uint64 {
	sizes := map[string]uint64{}
	for _, p := range outputs {
		if isMissing[p] {
			continue
		}
		name := path.Base(p)
		hashPart, _, ok := strings.Cut(name, "-")
		if !ok {
			continue
		}
		info, err := d.cache.NarInfo(ctx, hashPart)
		if err != nil {
			d.log.Debug("read narinfo of a cached output failed", "store_path", p, "err", err)
			continue
		}
		sizes[p] = info.NarSize
	}
	return sizes
}

// failEvaluation records an evaluation that could not produce a graph.
func (d *driver) failEvaluation(e db.Evaluation, msg string) {
	now := d.now().UTC()
	e.Status = db.EvalFailed
	e.Error = msg
	e.FinishedAt = &now
	if err := d.db.PutEvaluation(e); err != nil {
		d.log.Error("store evaluation failed", "evaluation_id", e.ID, "err", err)
	}
}

// addGraph hands an evaluation's graph to the scheduler. Builds that are
// already final (cached, or finished before a restart) are passed as
// cached so the scheduler only waits for the others. The workers' stores
// are queried after AddGraph.
func (d *driver) addGraph(ctx context.Context, e db.Evaluation, builds []db.Build) {
	d.addReportedGraph(ctx, e, builds, nil)
}

// addReportedGraph is addGraph with store reports that the caller gathered
// for this graph, see queryStoresBefore. They go to the scheduler before
// the graph, so that the jobs AddGraph assigns go where their inputs are.
// Workers without a report are queried after AddGraph.
func (d *driver) addReportedGraph(ctx context.Context, e db.Evaluation, builds []db.Build, reports []storeReport) {
	ae := &activeEval{eval: e, builds: make(map[string]*db.Build, len(builds))}
	g := scheduler.Graph{EvalID: db.FormatID(e.ID), Project: e.Org + "/" + e.Project}
	pending := 0
	for i := range builds {
		b := &builds[i]
		ae.builds[b.DrvPath] = b
		if b.Status == db.BuildFailed || b.Status == db.BuildDependencyFailed || b.Status == db.BuildAborted {
			continue
		}
		if !b.Status.Finished() {
			pending++
		}
		g.Derivations = append(g.Derivations, scheduler.Derivation{
			DrvPath:   b.DrvPath,
			Name:      b.Name,
			System:    b.System,
			Features:  b.Features,
			Parallel:  b.ParallelBuilding,
			InputDrvs: b.InputDrvs,
			Outputs:   outputPaths(b.Outputs),
			// NOTE: the size of a build that has not run yet is 0, not an
			// estimate, so the scheduler counts no cost for fetching it.
			OutputSize: b.OutputSize,
			Cached:     b.Status.Finished(),
		})
		if !b.Status.Finished() {
			// A build that a peer started before this graph was added is
			// known only from the mesh's board of announcements.
			g.Derivations[len(g.Derivations)-1].PeerETA = d.mesh.peerETA(b.DrvPath)
		}
		if w := d.heldWorker(b); w != "" {
			// The graph of a resumed evaluation: the worker may still
			// be building it, see resume.
			g.Derivations[len(g.Derivations)-1].HeldFor = w
			g.Derivations[len(g.Derivations)-1].HeldUntil = d.now().Add(d.cfg.WorkerLease)
		}
	}
	if pending == 0 {
		d.finishEvaluation(e.ID, ae)
		return
	}

	d.active[e.ID] = ae
	reported := map[*protocol.RemoteWorker]bool{}
	for _, r := range reports {
		d.reportStore(r)
		reported[r.worker] = true
	}
	decisions, err := d.sched.AddGraph(g, d.now())
	if err != nil {
		delete(d.active, e.ID)
		d.log.Error("scheduler rejected the graph", "evaluation_id", e.ID, "err", err)
		d.failEvaluation(e, "schedule derivation graph: "+err.Error())
		return
	}
	d.adoptSharedResults(ae)
	d.apply(ctx, decisions)
	if d.active[e.ID] == ae {
		d.noteSharedWaits(ae)
	}

	var unreported []*protocol.RemoteWorker
	for _, w := range d.workers {
		if !reported[w] {
			unreported = append(unreported, w)
		}
	}
	d.queryStores(ctx, unreported)
}

// adoptSharedResults copies into ae the outcome of every derivation that
// another live evaluation already built or failed: the scheduler holds one
// record per derivation and reports an outcome only once, when it happens.
// Called on the Run goroutine, before the decisions of AddGraph are
// applied, so that an evaluation done at once is stored with its outcomes.
func (d *driver) adoptSharedResults(ae *activeEval) {
	now := d.now().UTC()
	for _, b := range ae.builds {
		if b.Status.Finished() {
			continue
		}
		st, ok := d.sched.Status(b.DrvPath)
		if !ok {
			continue
		}
		switch st.State {
		case scheduler.StateBuilt:
			b.Status = db.BuildSucceeded
		case scheduler.StateFailed:
			b.Status = db.BuildFailed
			b.Error = st.FailReason
		case scheduler.StateDependencyFailed:
			b.Status = db.BuildDependencyFailed
			b.FailedDependency = st.FailedDep
		default:
			continue
		}
		b.FinishedAt = &now
		d.putBuild(b)
	}
}

// finishEvaluation stores the final state of an evaluation: failed when an
// entry point did not evaluate or any build did not succeed.
func (d *driver) finishEvaluation(evalID uint64, ae *activeEval) {
	delete(d.active, evalID)
	e, err := d.db.GetEvaluation(evalID)
	if err != nil {
		d.log.Error("load evaluation failed", "evaluation_id", evalID, "err", err)
		return
	}

	status := db.EvalSucceeded
	var failed []string
	for _, ep := range e.Results {
		if ep.EvalError != "" {
			status = db.EvalFailed
			failed = append(failed, ep.Attr)
		}
	}
	counts := map[db.BuildStatus]int{}
	now := d.now().UTC()
	for _, b := range ae.builds {
		if !b.Status.Finished() {
			// The scheduler gave up on it after jobs kept ending without
			// a result, such as on a worker that cannot run nix.
			b.Status = db.BuildFailed
			b.Error = "gradient: no job built it"
			if fault := d.faults[b.DrvPath]; fault != "" {
				b.Error += "; the last worker error was: " + fault
			}
			b.FinishedAt = &now
			if err := d.db.PutBuild(*b); err != nil {
				d.log.Error("store build failed", "build_id", b.ID, "err", err)
			}
		}
		delete(d.faults, b.DrvPath)
		counts[b.Status]++
		if !b.Status.Succeeded() {
			status = db.EvalFailed
		}
	}

	e.Status = status
	e.FinishedAt = &now
	if err := d.db.PutEvaluation(e); err != nil {
		d.log.Error("store evaluation failed", "evaluation_id", evalID, "err", err)
		return
	}
	slices.Sort(failed)
	d.log.Info("evaluation done", "evaluation_id", evalID, "status", status,
		"built", counts[db.BuildSucceeded], "cached", counts[db.BuildCached],
		"failed", counts[db.BuildFailed], "dependency_failed", counts[db.BuildDependencyFailed],
		"eval_errors", strings.Join(failed, ","))
}

func outputPaths(outputs map[string]string) []string {
	paths := make([]string, 0, len(outputs))
	for _, p := range outputs {
		if p != "" {
			paths = append(paths, p)
		}
	}
	slices.Sort(paths)
	return paths
}

// logLineWriter logs each line written to it at debug level. It is safe
// for concurrent use; lines written at once may interleave.
type logLineWriter struct {
	log  interface{ Debug(string, ...any) }
	msg  string
	mu   sync.Mutex
	part []byte
}

func (w *logLineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.part = append(w.part, p...)
	for {
		i := slices.Index(w.part, '\n')
		if i < 0 {
			break
		}
		w.log.Debug(w.msg, "line", string(w.part[:i]))
		w.part = w.part[i+1:]
	}
	return len(p), nil
}

var _ io.Writer = (*logLineWriter)(nil)
