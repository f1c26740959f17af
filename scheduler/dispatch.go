package scheduler

import (
	"math"
	"strconv"
	"time"
)

// dispatch assigns ready derivations to free slots until no ready
// derivation fits a free slot.
func (s *Scheduler) dispatch(now time.Time) {
	for {
		d := s.pickNext()
		if d == nil {
			return
		}
		s.assign(d, now)
	}
}

// pickNext returns the ready derivation to assign next, or nil. Among the
// tops of the queues whose class a free worker can build, the project with
// the fewest running jobs per share goes first, then the policy's order.
func (s *Scheduler) pickNext() *drv {
	var best *drv
	bestUsage := math.Inf(1)
	for _, c := range s.classOrder {
		if c.ready == 0 || !s.classHasFreeWorker(c) {
			continue
		}
		for _, q := range c.queues {
			if len(q.items) == 0 {
				continue
			}
			top := q.items[0]
			usage := float64(q.project.running) / q.project.share
			if best == nil || usage < bestUsage || usage == bestUsage && s.less(top, best) {
				best, bestUsage = top, usage
			}
		}
	}
	return best
}

func (s *Scheduler) classHasFreeWorker(c *class) bool {
	for _, w := range s.workers {
		if w.free() > 0 && w.canRun(c) {
			return true
		}
	}
	return false
}

// assign makes a job of the ready d, extended by the chain it starts
// under PolicyGradient, and places it on a free worker.
func (s *Scheduler) assign(d *drv, now time.Time) {
	chain := []*drv{d}
	if s.cfg.Policy == PolicyGradient {
		chain = s.extendChain(chain)
	}

	inputs := s.externalInputs(chain)
	w, score := s.place(chain, inputs)

	s.nextJob++
	j := &job{
		id:      s.cfg.JobIDPrefix + strconv.FormatUint(s.nextJob, 10),
		worker:  w,
		drvs:    chain,
		project: d.evals[0].project,
		since:   now,
	}
	s.jobs[j.id] = j
	w.running++
	w.jobs = append(w.jobs, j)
	j.project.running++

	s.dequeue(d)
	paths := make([]string, len(chain))
	for i, x := range chain {
		x.state = StateAssigned
		x.job = j
		x.reason = ""
		paths[i] = x.path
	}

	// The worker fetches the inputs it lacks, so later jobs find them there.
	for _, in := range inputs {
		w.store[in.path] = struct{}{}
	}

	s.emit(Assign{JobID: j.id, WorkerID: w.ID, DrvPaths: paths, Score: score})
}

// extendChain appends to chain, while the job has room, the only
// dependent of its last link when that dependent waits for nothing else
// and needs the same system and features.
func (s *Scheduler) extendChain(chain []*drv) []*drv {
	first := chain[0]
	for len(chain) < s.cfg.MaxJobLength {
		last := chain[len(chain)-1]

		var next *drv
		for _, dep := range last.dependents {
			if dep.removed || dep.state.terminal() {
				continue
			}
			if next != nil {
				return chain
			}
			next = dep
		}
		if next == nil || next.state != StateWaiting || next.missing != 1 || next.class != first.class || !next.postponedUntil.IsZero() {
			return chain
		}
		chain = append(chain, next)
	}
	return chain
}

// externalInputs returns the inputs of the chain's links that are not
// links themselves, each once.
func (s *Scheduler) externalInputs(chain []*drv) []*drv {
	if len(chain) == 1 {
		return chain[0].inputs
	}

	s.stamp++
	for _, x := range chain {
		x.stamp = s.stamp
	}
	var inputs []*drv
	for _, x := range chain {
		for _, in := range x.inputs {
			if in.stamp != s.stamp {
				in.stamp = s.stamp
				inputs = append(inputs, in)
			}
		}
	}
	return inputs
}
