package scheduler

import "time"

// Status is the Scheduler's current record of one derivation.
type Status struct {
	State State
	// Reason is why a derivation that is not assigned or done waits.
	Reason WaitReason
	// EvalIDs are the live evaluations that contain the derivation.
	EvalIDs []string
	// JobID and WorkerID name the job that builds the derivation, while it
	// is assigned.
	JobID, WorkerID string
	// FailedDep is the failed input of a derivation in
	// StateDependencyFailed.
	FailedDep string
	// FailReason is the worker's message for a derivation in StateFailed.
	FailReason string
	// EstimatedBuildTime is the estimate at speed 1 the derivation was
	// added with.
	EstimatedBuildTime time.Duration
	// Priority is the estimated critical path from the start of the
	// derivation's build to the end of its evaluations.
	Priority time.Duration
	// DependentCount estimates the number of transitive dependents.
	DependentCount float64
	// PostponedUntil is when a derivation postponed for a peer is built
	// locally.
	PostponedUntil time.Time
	// HeldFor is the worker a derivation in StateHeld is held for, and
	// HeldUntil when the hold ends.
	HeldFor   string
	HeldUntil time.Time
}

// Status returns the status of a derivation that a live evaluation
// contains, and false for any other.
func (s *Scheduler) Status(drvPath string) (Status, bool) {
	d, ok := s.drvs[drvPath]
	if !ok {
		return Status{}, false
	}

	st := Status{
		State:              d.state,
		FailedDep:          d.failedDep,
		FailReason:         d.failReason,
		EstimatedBuildTime: seconds(d.estimate),
		Priority:           seconds(d.priority),
		DependentCount:     d.dependentCount,
		PostponedUntil:     d.postponedUntil,
		HeldFor:            d.heldFor,
		HeldUntil:          d.heldUntil,
	}
	for _, e := range d.evals {
		st.EvalIDs = append(st.EvalIDs, e.id)
	}
	if d.job != nil {
		st.JobID = d.job.id
		st.WorkerID = d.job.worker.ID
	}

	switch d.state {
	case StateWaiting:
		st.Reason = InputsBuilding
	case StatePostponed:
		st.Reason = PostponedForPeer
	case StateHeld:
		st.Reason = HeldForWorker
	case StateReady:
		st.Reason = NoFreeSlot
		if !s.classHasWorker(d.class) {
			st.Reason = NoWorker
		}
	case StateDependencyFailed:
		st.Reason = DependencyFailedReason
	}
	return st, true
}

func seconds(s float64) time.Duration {
	return time.Duration(s * float64(time.Second))
}
