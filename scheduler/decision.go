package scheduler

import "time"

// Decision is the outcome of an event for the node to carry out: one of
// Assign, Cancel, Waiting, HoldEnded, GaveUp, DependencyFailed and
// EvaluationDone.
type Decision interface {
	isDecision()
}

// Assign requests the node to run a job on a worker: build DrvPaths in order,
// one after the other, and report each with DerivationBuilt or
// DerivationFailed, then the end of the job with JobFinished. The job holds
// one of the worker's slots until JobFinished or RemoveWorker.
type Assign struct {
	JobID    string
	WorkerID string
	// DrvPaths lists the derivations in build order. Each one after the
	// first depends on the one before.
	DrvPaths []string
	// Score explains why the job went to this worker.
	Score Score
}

// Cancel requests the node to stop a job whose derivations no evaluation needs
// any more. The job keeps its slot until JobFinished.
type Cancel struct {
	JobID    string
	WorkerID string
}

// Waiting reports a derivation that cannot be built yet, each time its
// reason changes to NoWorker, PostponedForPeer or HeldForWorker. The other
// reasons are returned by Status.
type Waiting struct {
	DrvPath string
	Reason  WaitReason
	// Until is when a derivation PostponedForPeer is built locally unless
	// the peer reports it built first, or when the hold of a derivation
	// HeldForWorker ends. Zero for other reasons.
	Until time.Time
}

// HoldEnded reports that a derivation held for a worker, see
// Derivation.HeldFor, is queued for any worker: its hold expired, or
// ReleaseHolds ended it, or the worker came back unable to build it. An
// Assign of the derivation may follow in the same list.
type HoldEnded struct {
	DrvPath  string
	WorkerID string
	// Expired is set when the worker did not come back before the end of
	// the hold.
	Expired bool
}

// GaveUp reports a derivation that failed because Config.MaxAttempts jobs
// ended without building it, such as on a worker that cannot run nix.
// The node records the failure: no job reports it.
type GaveUp struct {
	DrvPath string
	Reason  string
}

// DependencyFailed reports a derivation that will never be built because
// FailedDep, one of its transitive inputs, failed.
type DependencyFailed struct {
	// EvalIDs are the evaluations that contain DrvPath.
	EvalIDs   []string
	DrvPath   string
	FailedDep string
}

// EvaluationDone reports that every derivation of an evaluation is built,
// cached, failed or cannot be built because an input failed. The
// Scheduler drops the evaluation afterwards.
type EvaluationDone struct {
	EvalID string
	// Built counts the derivations built by a job, including those built
	// for another evaluation that also contains them.
	Built int
	// Cached counts the derivations that were Cached or that PeerBuilt
	// reported built.
	Cached int
	// Failed counts derivations that failed to build.
	Failed int
	// DependencyFailed counts derivations never built because an input
	// failed.
	DependencyFailed int
}

func (Assign) isDecision()           {}
func (Cancel) isDecision()           {}
func (Waiting) isDecision()          {}
func (HoldEnded) isDecision()        {}
func (GaveUp) isDecision()           {}
func (DependencyFailed) isDecision() {}
func (EvaluationDone) isDecision()   {}

// WaitReason is the reason a derivation is not being built.
type WaitReason string

const (
	// InputsBuilding means some inputs are not built yet.
	InputsBuilding WaitReason = "inputs-building"
	// NoWorker means no registered worker has the derivation's system and
	// features.
	NoWorker WaitReason = "no-worker"
	// NoFreeSlot means workers that can build it exist but all their
	// slots are busy with jobs of higher priority or of other projects.
	NoFreeSlot WaitReason = "no-free-slot"
	// PostponedForPeer means a peer announced it is building the
	// derivation, see Scheduler.PeerBuilding.
	PostponedForPeer WaitReason = "postponed-for-peer"
	// HeldForWorker means the worker that was building the derivation
	// when the node stopped may still be building it, so no other worker
	// gets it until that one comes back or the hold ends, see
	// Derivation.HeldFor.
	HeldForWorker WaitReason = "held-for-worker"
	// DependencyFailedReason means an input failed, so the derivation is
	// never built.
	DependencyFailedReason WaitReason = "dependency-failed"
)

// Score is the placement score of a job on its worker, stored with the
// Assign so that the choice can be explained later. A lower Total is
// better. Under PolicyHydra and PolicyFIFO the worker is chosen by the
// policy's own rule, and the Score is computed the same way for comparison.
type Score struct {
	// FetchBytes is the NAR size of the job's inputs whose outputs are
	// missing from the worker's store, as far as ReportStore and earlier
	// jobs on the worker tell.
	FetchBytes uint64
	// FetchSeconds is FetchBytes divided by Config.FetchBandwidth.
	FetchSeconds float64
	// BuildSeconds is the job's estimated build time divided by the
	// worker's speed, and also by its slots when the job has an idle
	// worker to itself.
	BuildSeconds float64
	// Speed is the worker's speed.
	Speed float64
	// Total is FetchSeconds plus BuildSeconds.
	Total float64
	// Urgent is set when the job was on or near the estimated critical
	// path, so PolicyGradient took it in priority order rather than for
	// the locality of its inputs. Always set under the other policies.
	Urgent bool
	// Candidates is the number of workers with a free slot, the system and
	// the features the job needs, the chosen one included.
	Candidates int
	// RunnerUp is the candidate with the next best Total, empty when there
	// was only one candidate.
	RunnerUp string
	// RunnerUpTotal is RunnerUp's Total.
	RunnerUpTotal float64
	// Exclusive is set when the worker starts no other job while this one
	// runs, so the job's build gets the worker's cores as its other jobs
	// end. Under PolicyGradient an urgent job with a parallel link gets
	// this when other ready derivations do not have to wait for it.
	Exclusive bool
}
