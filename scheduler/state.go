package scheduler

import "time"

// State is the stage of a derivation's life.
type State string

const (
	// StateWaiting means some inputs are not built yet.
	StateWaiting State = "waiting"
	// StateReady means every input is built and the derivation waits for a
	// slot.
	StateReady State = "ready"
	// StatePostponed means a peer is building the derivation.
	StatePostponed State = "postponed"
	// StateHeld means the worker that was building the derivation when
	// the node stopped may still be building it, so it waits for that
	// worker, see Derivation.HeldFor.
	StateHeld State = "held"
	// StateAssigned means the derivation is part of a job on a worker.
	StateAssigned State = "assigned"
	// StateBuilt means a job built it, or it was cached, or a peer built it.
	StateBuilt State = "built"
	// StateFailed means its build failed.
	StateFailed State = "failed"
	// StateDependencyFailed means an input failed, so it is never built.
	StateDependencyFailed State = "dependency-failed"
)

func (st State) terminal() bool {
	return st == StateBuilt || st == StateFailed || st == StateDependencyFailed
}

// drv is the Scheduler's record of one derivation, shared by every
// evaluation that contains it.
type drv struct {
	path       string
	pname      string
	class      *class
	outputs    []string
	outputSize uint64
	parallel   bool

	inputs     []*drv
	dependents []*drv
	// missing counts the inputs that are not built.
	missing int

	state State
	// cached is set when the derivation was built without a job: Cached in
	// its graph, or reported by PeerBuilt.
	cached    bool
	failedDep string
	attempts  int

	// evals are the live evaluations that contain the derivation, oldest
	// first. The first one's project is charged for its jobs.
	evals []*evaluation
	job   *job
	// removed is set when the last evaluation containing the derivation
	// was cancelled, so nothing queues it again.
	removed bool
	// failReason is the worker's message for a failed build.
	failReason string

	// estimate is the estimated build time in seconds at speed 1.
	estimate float64
	// inWork is set while estimate counts in Scheduler.remainingWork.
	inWork bool
	// priority is the estimated critical path in seconds from the start of
	// this derivation to the end of its evaluations.
	priority float64
	// sketch estimates the number of transitive dependents.
	sketch         sketch
	dependentCount float64
	// readySeq orders derivations by the time they became ready.
	readySeq uint64
	// heapIndex is the position in its ready queue, -1 when not queued.
	heapIndex int
	// stamp marks derivations already visited by a walk, see
	// Scheduler.stamp.
	stamp uint64

	// postponedUntil is when a derivation a peer builds is built locally.
	postponedUntil time.Time
	reason         WaitReason
	// heldFor is the worker the derivation is held for, see
	// Derivation.HeldFor, and heldUntil when the hold ends. Both are
	// zero when it is not held.
	heldFor   string
	heldUntil time.Time
}

// evaluation is one Graph the Scheduler holds until it is done.
type evaluation struct {
	id      string
	project *project
	drvs    []*drv
	// pending counts the derivations that are not terminal.
	pending int
	done    EvaluationDone
}

// job is a chain of derivations running on one worker.
type job struct {
	id        string
	worker    *worker
	drvs      []*drv
	project   *project
	cancelled bool
	// since is when the last link was built, or when the job started, for
	// measuring the build time of the next link.
	since time.Time
}

// worker is a registered Worker and its slots.
type worker struct {
	Worker
	speed   float64
	running int
	// away is set while the worker's connection is down and its jobs
	// wait for it: it keeps its jobs but gets no new ones.
	away bool
	// reserved counts slots that other work, such as evaluations, takes.
	reserved int
	// exclusive is the job that has the worker to itself, see
	// Score.Exclusive. No other job starts while it is set.
	exclusive *job
	jobs      []*job
	// store contains the store paths ReportStore listed and the drv paths
	// whose outputs the worker built or fetched for an assigned job.
	store map[string]struct{}
}

// project accounts the running jobs of one project for fairness.
type project struct {
	name    string
	share   float64
	running int
	// vtime counts the jobs the project started, each as 1/share. Between
	// projects with as many running jobs per share, the one with the
	// lower vtime goes first, so shares hold even with one slot.
	vtime float64
}

// class groups the derivations that need the same system and features, so
// a free slot is matched against a few classes rather than every ready
// derivation.
type class struct {
	key      string
	system   string
	features []string
	// queues holds one ready queue per project, in order of creation.
	queues []*readyQueue
	ready  int
}

func (w *worker) canRun(c *class) bool {
	found := false
	for _, s := range w.Systems {
		if s == c.system {
			found = true
			break
		}
	}
	if !found {
		return false
	}
	for _, f := range c.features {
		ok := false
		for _, wf := range w.Features {
			if wf == f {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func (w *worker) free() int {
	if w.away || w.exclusive != nil {
		return 0
	}
	return max(0, w.Slots-w.running-w.reserved)
}

// hasOutputs reports whether the worker's store holds every output of d.
func (w *worker) hasOutputs(d *drv) bool {
	if _, ok := w.store[d.path]; ok {
		return true
	}
	if len(d.outputs) == 0 {
		return false
	}
	for _, out := range d.outputs {
		if _, ok := w.store[out]; !ok {
			return false
		}
	}
	return true
}
