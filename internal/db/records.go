package db

import (
	"time"

	"github.com/gradient-ci/gradient/protocol"
)

// Org is an organisation, the owner of projects.
type Org struct {
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// Project is a flake and the patterns of the outputs to build from it.
type Project struct {
	Org      string `json:"org"`
	Name     string `json:"name"`
	FlakeRef string `json:"flake"`
	// EntryPoints are attribute path patterns such as "packages.*.*".
	EntryPoints []string  `json:"entry_points"`
	CreatedAt   time.Time `json:"created_at"`
	// LastEvaluation is the ID of the newest evaluation, 0 before the first.
	LastEvaluation uint64 `json:"last_evaluation,omitempty"`
}

// EvalStatus is the state of an evaluation.
type EvalStatus string

// Evaluation states. Queued, Evaluating and Building are in progress; the
// others are final.
const (
	EvalQueued     EvalStatus = "queued"
	EvalEvaluating EvalStatus = "evaluating"
	EvalBuilding   EvalStatus = "building"
	// EvalSucceeded means every entry point evaluated and built.
	EvalSucceeded EvalStatus = "succeeded"
	// EvalFailed means the flake could not be evaluated at all, or at
	// least one entry point failed to evaluate or build.
	EvalFailed  EvalStatus = "failed"
	EvalAborted EvalStatus = "aborted"
)

// Finished reports whether s is a final state.
func (s EvalStatus) Finished() bool {
	return s == EvalSucceeded || s == EvalFailed || s == EvalAborted
}

// Evaluation is one run of a project: evaluate the flake, then build the
// derivations of its entry points.
type Evaluation struct {
	ID          uint64     `json:"id"`
	Org         string     `json:"org"`
	Project     string     `json:"project"`
	FlakeRef    string     `json:"flake"`
	EntryPoints []string   `json:"entry_point_patterns"`
	Status      EvalStatus `json:"status"`
	// Error is the reason the whole evaluation failed, such as a flake
	// that cannot be fetched. Errors of single attributes are in Results.
	Error string `json:"error,omitempty"`
	// Waiting says why a queued evaluation does not start, such as no
	// connected worker that evaluates, and what to do about it. Empty
	// once it starts.
	Waiting string `json:"waiting,omitempty"`
	// Flake is the source as nix locked it, set once evaluation starts.
	Flake protocol.LockedFlake `json:"locked_flake"`
	// Results has one element per matching attribute.
	Results    []EntryPointResult `json:"entry_points"`
	CreatedAt  time.Time          `json:"created_at"`
	StartedAt  *time.Time         `json:"started_at,omitempty"`
	FinishedAt *time.Time         `json:"finished_at,omitempty"`
}

// EntryPointResult is one flake attribute of an evaluation and the build of
// its derivation.
type EntryPointResult struct {
	Attr    string `json:"attr"`
	DrvPath string `json:"drv_path,omitempty"`
	// EvalError is nix's message when the attribute failed to evaluate.
	EvalError string `json:"eval_error,omitempty"`
	// BuildID is the build of DrvPath within this evaluation, 0 when the
	// attribute did not evaluate.
	BuildID uint64 `json:"build_id,omitempty"`
}

// BuildStatus is the state of one derivation's build within an evaluation.
type BuildStatus string

// Build states. Queued and Building are in progress; the others are final.
const (
	BuildQueued   BuildStatus = "queued"
	BuildBuilding BuildStatus = "building"
	// BuildSucceeded means the outputs were built and are in the cache.
	BuildSucceeded BuildStatus = "succeeded"
	// BuildCached means every output was already in the cache, so nothing
	// ran.
	BuildCached BuildStatus = "cached"
	BuildFailed BuildStatus = "failed"
	// BuildDependencyFailed means an input failed, so this one never ran.
	BuildDependencyFailed BuildStatus = "dependency_failed"
	BuildAborted          BuildStatus = "aborted"
)

// Finished reports whether s is a final state.
func (s BuildStatus) Finished() bool {
	return s != BuildQueued && s != BuildBuilding
}

// Succeeded reports whether the outputs are available.
func (s BuildStatus) Succeeded() bool {
	return s == BuildSucceeded || s == BuildCached
}

// Build is one derivation of an evaluation's graph. A derivation shared by
// two evaluations has a Build in each, but nix builds it once.
type Build struct {
	ID        uint64            `json:"id"`
	EvalID    uint64            `json:"evaluation_id"`
	DrvPath   string            `json:"drv_path"`
	Name      string            `json:"name"`
	System    string            `json:"system"`
	Features  []string          `json:"required_system_features,omitempty"`
	InputDrvs []string          `json:"input_drvs,omitempty"`
	Outputs   map[string]string `json:"outputs"`
	Status    BuildStatus       `json:"status"`
	// Error is nix's message for a failed build.
	Error string `json:"error,omitempty"`
	// ParallelBuilding is set when the builder runs in parallel.
	ParallelBuilding bool `json:"parallel_building,omitempty"`
	// FailedDependency is the .drv whose failure stopped this build.
	FailedDependency string `json:"failed_dependency,omitempty"`
	// FailedDependencyBuildID is the build of FailedDependency in the
	// same evaluation. The API fills it in when it returns the build.
	FailedDependencyBuildID uint64 `json:"failed_dependency_build_id,omitempty"`
	// WorkerID is the worker that runs or ran the build, set when the
	// build starts. PutBuild clears it while the build is queued.
	WorkerID string `json:"worker_id,omitempty"`
	// Waiting is the reason an unfinished build does not run, such as
	// that no connected worker has its system and features; empty
	// otherwise. The fields up to WaitingUntil describe the same wait.
	// The API computes them from the node's scheduler when it can, and
	// PutBuild clears them once the build is finished.
	Waiting string `json:"waiting,omitempty"`
	// WaitingReason is the scheduler's type of the wait, such as
	// "no-worker" or "inputs-building", see scheduler.WaitReason. Empty
	// when the scheduler holds nothing back, such as for a build assigned
	// to a worker that has not started it yet.
	WaitingReason string `json:"waiting_reason,omitempty"`
	// WaitingFor is the .drv, a direct or transitive input, whose own
	// wait holds an "inputs-building" build up, and WaitingForBuildID
	// its build in the same evaluation.
	WaitingFor        string `json:"waiting_for,omitempty"`
	WaitingForBuildID uint64 `json:"waiting_for_build_id,omitempty"`
	// WaitingUntil is when the wait ends: when a build that no worker can
	// run fails, when one that a mesh peer builds is built here instead,
	// or when a hold for a worker ends. For an "inputs-building" build it
	// is that time of WaitingFor. Nil when no such time is known.
	WaitingUntil *time.Time `json:"waiting_until,omitempty"`
	// Placement is the scheduler's reason for the build's last job, set
	// when the job is assigned. Nil for a build that never had a job.
	Placement *Placement `json:"placement,omitempty"`
	// OutputSize is the NAR size of all outputs in bytes: the sizes the
	// worker reported for a build that succeeded, those of the cache's
	// narinfos for a cached one, 0 when unknown.
	OutputSize uint64     `json:"output_size,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Wait is the reason an unfinished build does not run, as the Build
// fields Waiting to WaitingUntil hold it.
type Wait struct {
	Reason     string
	Text       string
	For        string
	ForBuildID uint64
	// Until is zero when no end is known.
	Until time.Time
}

// SetWait replaces the wait fields of b with w.
func (b *Build) SetWait(w Wait) {
	b.Waiting = w.Text
	b.WaitingReason = w.Reason
	b.WaitingFor = w.For
	b.WaitingForBuildID = w.ForBuildID
	b.WaitingUntil = nil
	if !w.Until.IsZero() {
		until := w.Until.UTC()
		b.WaitingUntil = &until
	}
}

// clearStale empties the fields that no longer apply to a build in its
// status: a finished build waits for nothing, and a queued build runs on
// no worker.
func (b *Build) clearStale() {
	if b.Status.Finished() {
		b.SetWait(Wait{})
	}
	if b.Status == BuildQueued {
		b.WorkerID = ""
	}
}

// Placement records why the scheduler gave a job to a worker: the
// scheduler's Score of the job on that worker.
type Placement struct {
	// JobID is the scheduler's job. The links of a chain share one job.
	JobID    string `json:"job_id"`
	WorkerID string `json:"worker_id"`
	// Links is the number of derivations of the job.
	Links int `json:"links"`
	// FetchBytes is the NAR size of the job's inputs that the worker's
	// store lacked, as far as the scheduler knew.
	FetchBytes uint64 `json:"fetch_bytes"`
	// FetchSeconds is FetchBytes at the scheduler's fetch bandwidth.
	FetchSeconds float64 `json:"fetch_seconds"`
	// BuildSeconds is the estimated build time on the worker.
	BuildSeconds float64 `json:"build_seconds"`
	// Speed is the worker's speed relative to a reference machine.
	Speed float64 `json:"speed"`
	// Total is FetchSeconds plus BuildSeconds; lower is better.
	Total float64 `json:"total"`
	// Urgent is set when the job was near the critical path, so it was
	// placed in priority order rather than for the locality of its inputs.
	Urgent bool `json:"urgent"`
	// Exclusive is set when the job had its worker to itself: no other
	// job started there while it ran, so its parallel build got the
	// worker's cores.
	Exclusive bool `json:"exclusive,omitempty"`
	// Candidates counts the workers that had a free slot and could run
	// the job, the chosen one included.
	Candidates int `json:"candidates"`
	// RunnerUp is the candidate with the next best Total, empty when
	// there was one candidate.
	RunnerUp      string    `json:"runner_up,omitempty"`
	RunnerUpTotal float64   `json:"runner_up_total,omitempty"`
	AssignedAt    time.Time `json:"assigned_at"`
}
