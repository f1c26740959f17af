package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/web"
)

var _ web.WaitExplainer = (*driver)(nil)

// ExplainWaits returns the wait of each unfinished build of drvPaths in
// an active evaluation, from the scheduler's current state. It
// implements web.WaitExplainer. The Run goroutine computes the waits, so
// it fails when ctx ends before Run gets to it.
func (d *driver) ExplainWaits(ctx context.Context, evalID uint64, drvPaths []string) (map[string]db.Wait, error) {
	reply := make(chan map[string]db.Wait, 1)
	err := d.post(ctx, func(context.Context) { reply <- d.explainWaits(evalID, drvPaths) })
	if err != nil {
		return nil, err
	}
	select {
	case waits := <-reply:
		return waits, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// explainWaits computes the waits of ExplainWaits. An evaluation that
// is not active has none. Called on the Run goroutine.
func (d *driver) explainWaits(evalID uint64, drvPaths []string) map[string]db.Wait {
	ae, ok := d.active[evalID]
	if !ok {
		return nil
	}
	x := &waitExplainer{d: d, ae: ae, status: map[string]scheduler.Status{}, blockers: map[string]blocker{}}
	waits := make(map[string]db.Wait, len(drvPaths))
	for _, p := range drvPaths {
		b, ok := ae.builds[p]
		if !ok || b.Status.Finished() {
			continue
		}
		if w, ok := x.explain(b); ok {
			waits[p] = w
		}
	}
	return waits
}

// noteSharedWaits stores in the builds of ae that wait for a worker with
// their system and features the wait that the driver tracks for their
// derivation. The scheduler reports that wait once, when it starts, so a
// derivation that an earlier evaluation added keeps that deadline. A
// derivation whose earlier wait ended in a failure that the scheduler
// does not know of starts a new wait. Called on the Run goroutine after
// AddGraph.
func (d *driver) noteSharedWaits(ae *activeEval) {
	for _, b := range ae.builds {
		if b.Status.Finished() {
			continue
		}
		st, ok := d.sched.Status(b.DrvPath)
		if !ok || st.State != scheduler.StateReady || st.Reason != scheduler.NoWorker {
			continue
		}
		if _, ok := d.unsupported[b.DrvPath]; !ok {
			d.noteNoWorker(b.DrvPath)
			continue
		}
		w := d.noWorkerWait(b.DrvPath)
		if b.Waiting == w.Text {
			continue
		}
		b.SetWait(w)
		d.putBuild(b)
	}
}

// noWorkerWait returns the wait of a derivation that no connected worker
// can build, with the time it fails at when the driver tracks the wait.
// Called on the Run goroutine.
func (d *driver) noWorkerWait(drvPath string) db.Wait {
	system, features := d.platform(drvPath)
	w := db.Wait{Reason: string(scheduler.NoWorker), Text: "waiting for " + workerNeed(system, features)}
	if deadline, ok := d.unsupportedDeadline(drvPath); ok {
		w.Until = deadline
		w.Text += "; fails at " + formatTime(deadline) + " unless one connects"
	}
	return w
}

// unsupportedDeadline returns when a derivation that waits for a worker
// with its system and features fails, and false when the driver does
// not track its wait or fails it at once.
func (d *driver) unsupportedDeadline(drvPath string) (time.Time, bool) {
	since, ok := d.unsupported[drvPath]
	if !ok || d.cfg.UnsupportedTimeout < 0 {
		return time.Time{}, false
	}
	return since.Add(d.cfg.UnsupportedTimeout), true
}

// workerNeed describes a worker that can build for system with features.
func workerNeed(system string, features []string) string {
	need := "a worker with system " + system
	if len(features) > 0 {
		need += " and features " + strings.Join(features, ",")
	}
	return need
}

func formatTime(t time.Time) string {
	return t.UTC().Format(time.RFC3339)
}

// waitExplainer computes the waits of the builds of one evaluation. It
// keeps what it looked up, so one instance serves one request.
type waitExplainer struct {
	d        *driver
	ae       *activeEval
	status   map[string]scheduler.Status
	blockers map[string]blocker
}

// blocker is the derivation whose own wait holds another one up, with
// the rank of that wait, see waitRank.
type blocker struct {
	drvPath string
	rank    int
}

// explain returns the wait of b, and false when the scheduler does not
// hold b's derivation or has just finished it, so that the stored wait
// stays.
func (x *waitExplainer) explain(b *db.Build) (db.Wait, bool) {
	st, ok := x.lookup(b.DrvPath)
	if !ok {
		return db.Wait{}, false
	}

	var w db.Wait
	switch st.State {
	case scheduler.StateAssigned:
		return x.assignedWait(b, st), true
	case scheduler.StateHeld:
		return x.ownWait(b.DrvPath, st), true
	case scheduler.StateWaiting:
		w = x.inputWait(b)
	case scheduler.StateReady, scheduler.StatePostponed:
		w = x.ownWait(b.DrvPath, st)
	default:
		return db.Wait{}, false
	}

	// The build is queued again, such as after its worker left.
	if p := b.Placement; p != nil {
		w.Text += "; its last job, " + p.JobID + " on worker " + p.WorkerID + ", ended without building it"
	}
	return w, true
}

// lookup returns the scheduler's status of a derivation.
func (x *waitExplainer) lookup(drvPath string) (scheduler.Status, bool) {
	if st, ok := x.status[drvPath]; ok {
		return st, true
	}
	st, ok := x.d.sched.Status(drvPath)
	if ok {
		x.status[drvPath] = st
	}
	return st, ok
}

// ownWait returns the wait of a derivation that waits for something
// other than its inputs: a worker, a free slot, a mesh peer or a hold.
func (x *waitExplainer) ownWait(drvPath string, st scheduler.Status) db.Wait {
	switch st.State {
	case scheduler.StatePostponed:
		return db.Wait{
			Reason: string(scheduler.PostponedForPeer),
			Text:   "waiting for " + x.peer(drvPath) + ", which is building it; it is built here from " + formatTime(st.PostponedUntil) + " unless the peer finishes first",
			Until:  st.PostponedUntil,
		}
	case scheduler.StateHeld:
		return db.Wait{
			Reason: string(scheduler.HeldForWorker),
			Text:   "the node restarted during the build: waiting until " + formatTime(st.HeldUntil) + " for worker " + st.HeldFor + ", which may still be building it, to reconnect",
			Until:  st.HeldUntil,
		}
	}

	if st.Reason == scheduler.NoWorker {
		return x.d.noWorkerWait(drvPath)
	}
	return db.Wait{Reason: string(scheduler.NoFreeSlot), Text: "waiting for a free slot on " + x.workersFor(drvPath)}
}

// peer names the mesh peer that builds a derivation.
func (x *waitExplainer) peer(drvPath string) string {
	if id := x.d.mesh.peerBuilding(drvPath); id != "" {
		return "mesh peer " + id
	}
	return "a mesh peer"
}

// workersFor describes the workers the scheduler counts that can build a
// derivation, such as "one of the 2 workers with system x86_64-linux".
func (x *waitExplainer) workersFor(drvPath string) string {
	b := x.ae.builds[drvPath]
	var ids []string
	for id, l := range x.d.links {
		if slices.Contains(l.hello.Systems, b.System) && !slices.ContainsFunc(b.Features, func(f string) bool { return !slices.Contains(l.hello.Features, f) }) {
			ids = append(ids, id)
		}
	}
	need := strings.TrimPrefix(workerNeed(b.System, b.Features), "a worker ")
	if len(ids) == 1 {
		return "worker " + ids[0] + ", the only one " + need
	}
	return fmt.Sprintf("one of the %d workers %s", len(ids), need)
}

// assignedWait returns the wait of a derivation that is part of a job:
// none while it builds, its input while an earlier link of the job
// builds that, or the job's start.
func (x *waitExplainer) assignedWait(b *db.Build, st scheduler.Status) db.Wait {
	away, isAway := x.d.away.get(st.WorkerID)
	if b.Status == db.BuildBuilding {
		if !isAway {
			return db.Wait{}
		}
		return db.Wait{
			Text:  "the connection to worker " + st.WorkerID + " dropped during the build: waiting until " + formatTime(away.until) + " for it to reconnect before the build is queued again",
			Until: away.until,
		}
	}
	if in, _ := x.blockingInput(b); in != "" {
		return x.inputWait(b)
	}
	if isAway {
		return db.Wait{
			Text:  "assigned to worker " + st.WorkerID + " (job " + st.JobID + "), whose connection dropped: waiting until " + formatTime(away.until) + " for it to reconnect",
			Until: away.until,
		}
	}
	return db.Wait{Text: "assigned to worker " + st.WorkerID + " (job " + st.JobID + "), which has not started it yet"}
}

// inputWait returns the wait of a build for its inputs: the input that
// holds it up longest, and that input's own wait.
func (x *waitExplainer) inputWait(b *db.Build) db.Wait {
	in, root := x.blockingInput(b)
	if in == "" {
		return db.Wait{Reason: string(scheduler.InputsBuilding), Text: "waiting for its inputs"}
	}

	w := db.Wait{Reason: string(scheduler.InputsBuilding), For: root.drvPath, ForBuildID: x.buildID(root.drvPath)}
	text := "waiting for input " + x.name(in)
	if root.drvPath != in {
		text += ", which waits for " + x.name(root.drvPath)
	}
	clause, until := x.clause(root.drvPath)
	w.Text = text + ", which " + clause
	w.Until = until
	return w
}

// blockingInput returns the input of b that is not built and whose
// blocker waits longest, with that blocker, or "" when every input is
// built.
func (x *waitExplainer) blockingInput(b *db.Build) (string, blocker) {
	best, bestIn := blocker{rank: -1}, ""
	for _, in := range b.InputDrvs {
		st, ok := x.lookup(in)
		if !ok || st.State == scheduler.StateBuilt {
			continue
		}
		r := x.blockerOf(in)
		if bestIn == "" || r.rank < best.rank {
			best, bestIn = r, in
		}
	}
	return bestIn, best
}

// blockerOf returns the blocker of a derivation that is not built: the
// derivation itself unless it waits for its inputs, else the blocker of
// its input that waits longest.
func (x *waitExplainer) blockerOf(drvPath string) blocker {
	if r, ok := x.blockers[drvPath]; ok {
		return r
	}
	st, _ := x.lookup(drvPath)
	r := blocker{drvPath: drvPath, rank: waitRank(st)}
	if b, ok := x.ae.builds[drvPath]; ok && st.State == scheduler.StateWaiting {
		if in, inner := x.blockingInput(b); in != "" {
			r = inner
		}
	}
	x.blockers[drvPath] = r
	return r
}

// waitRank ranks the state of a blocker by how long it likely holds its
// dependents up, 0 for the longest: a missing worker may never come,
// while a job that is assigned already is running or about to.
func waitRank(st scheduler.Status) int {
	switch {
	case st.State == scheduler.StateReady && st.Reason == scheduler.NoWorker:
		return 0
	case st.State == scheduler.StateFailed || st.State == scheduler.StateDependencyFailed:
		return 1
	case st.State == scheduler.StateHeld:
		return 2
	case st.State == scheduler.StatePostponed:
		return 3
	case st.State == scheduler.StateReady:
		return 4
	case st.State == scheduler.StateAssigned:
		return 5
	}
	return 6
}

// clause describes the state of a blocker after "which", and returns
// when its wait ends, when that is known.
func (x *waitExplainer) clause(drvPath string) (string, time.Time) {
	st, _ := x.lookup(drvPath)
	switch st.State {
	case scheduler.StateReady:
		w := x.ownWait(drvPath, st)
		return "is " + w.Text, w.Until
	case scheduler.StatePostponed:
		return "is being built by " + x.peer(drvPath) + "; it is built here from " + formatTime(st.PostponedUntil) + " unless the peer finishes first", st.PostponedUntil
	case scheduler.StateHeld:
		return "is held until " + formatTime(st.HeldUntil) + " for worker " + st.HeldFor + ", which may still be building it since the node restarted", st.HeldUntil
	case scheduler.StateAssigned:
		if b, ok := x.ae.builds[drvPath]; ok && b.Status == db.BuildBuilding {
			return "is building on worker " + st.WorkerID, time.Time{}
		}
		return "is assigned to worker " + st.WorkerID + " (job " + st.JobID + ")", time.Time{}
	case scheduler.StateFailed:
		return "failed", time.Time{}
	case scheduler.StateDependencyFailed:
		return "is not built because its input " + st.FailedDep + " failed", time.Time{}
	}
	return "is " + string(st.State), time.Time{}
}

// name returns a derivation's .drv path and its build ID in the
// evaluation.
func (x *waitExplainer) name(drvPath string) string {
	if id := x.buildID(drvPath); id != 0 {
		return fmt.Sprintf("%s (build %d)", drvPath, id)
	}
	return drvPath
}

func (x *waitExplainer) buildID(drvPath string) uint64 {
	if b, ok := x.ae.builds[drvPath]; ok {
		return b.ID
	}
	return 0
}
