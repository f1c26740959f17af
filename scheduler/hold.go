package scheduler

import "time"

// A hold keeps a derivation for the worker that was building it when the
// node stopped, see Derivation.HeldFor. The node learns only after its
// restart whether that worker is still building it, so until the worker
// comes back or the hold ends, no other worker gets the derivation and
// the builder does not run twice.

// ReleaseHolds ends the holds for workerID on every derivation whose path
// is not in keep, such as those the worker does not report building when
// it reconnects, and queues them for any worker. Each one gets a HoldEnded
// decision.
func (s *Scheduler) ReleaseHolds(workerID string, keep []string, now time.Time) []Decision {
	kept := make(map[string]bool, len(keep))
	for _, p := range keep {
		kept[p] = true
	}

	var released []*drv
	held := s.held[:0]
	for _, d := range s.held {
		if d.heldFor == workerID && !kept[d.path] {
			released = append(released, d)
		} else {
			held = append(held, d)
		}
	}
	clear(s.held[len(held):])
	s.held = held

	for _, d := range released {
		s.endHold(d, false, now)
	}
	s.dispatch(now)
	return s.take()
}

// holdFor keeps d for the worker workerID until until, see
// Derivation.HeldFor, and emits a Waiting decision when it does.
func (s *Scheduler) holdFor(d *drv, workerID string, until, now time.Time) {
	if d.state.terminal() || d.state == StateAssigned || d.missing > 0 || !until.After(now) {
		return
	}

	if d.heldFor == "" {
		s.held = append(s.held, d)
	}
	d.heldFor, d.heldUntil = workerID, until
	if d.state == StateReady {
		s.dequeue(d)
	}
	d.state = StateHeld
	d.reason = HeldForWorker
	s.emit(Waiting{DrvPath: d.path, Reason: HeldForWorker, Until: until})
}

// adoptHolds assigns each derivation held for w to w, each as a job of
// one slot of its own, whether or not w has a free slot, because w may
// still be building it. A held derivation that w cannot build is queued
// for any worker. An away worker adopts nothing yet.
func (s *Scheduler) adoptHolds(w *worker, now time.Time) {
	if w.away || len(s.held) == 0 {
		return
	}

	var adopted []*drv
	held := s.held[:0]
	for _, d := range s.held {
		if d.heldFor == w.ID {
			adopted = append(adopted, d)
		} else {
			held = append(held, d)
		}
	}
	clear(s.held[len(held):])
	s.held = held

	for _, d := range adopted {
		if d.removed || d.state != StateHeld || !w.canRun(d.class) {
			s.endHold(d, false, now)
			continue
		}
		s.clearHold(d)
		score := s.score(w, d.inputs, d.estimate)
		score.Candidates = 1
		s.startJob(w, []*drv{d}, d.inputs, score, now)
	}
}

// expireHolds queues the held derivations whose hold ended by now for any
// worker, and drops the holds of derivations that are no longer held,
// such as those a peer built or whose evaluations were cancelled.
func (s *Scheduler) expireHolds(now time.Time) {
	var expired []*drv
	held := s.held[:0]
	for _, d := range s.held {
		switch {
		case d.removed || d.state != StateHeld:
			s.clearHold(d)
		case now.Before(d.heldUntil):
			held = append(held, d)
		default:
			expired = append(expired, d)
		}
	}
	clear(s.held[len(held):])
	s.held = held

	for _, d := range expired {
		s.endHold(d, true, now)
	}
}

// endHold ends the hold of d, which the caller took out of Scheduler.held,
// and queues d when it is still held. A derivation that is still held gets
// a HoldEnded decision.
func (s *Scheduler) endHold(d *drv, expired bool, now time.Time) {
	workerID := d.heldFor
	s.clearHold(d)
	if d.removed || d.state != StateHeld {
		return
	}
	s.emit(HoldEnded{DrvPath: d.path, WorkerID: workerID, Expired: expired})
	s.enqueue(d, now)
}

// clearHold resets the hold fields of d.
func (s *Scheduler) clearHold(d *drv) {
	d.heldFor = ""
	d.heldUntil = time.Time{}
	if d.reason == HeldForWorker {
		d.reason = ""
	}
}
