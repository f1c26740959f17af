package scheduler

import (
	"math"
	"slices"
	"strconv"
	"time"
)

// dispatch assigns ready derivations to free slots until no ready
// derivation fits a free slot.
func (s *Scheduler) dispatch(now time.Time) {
	s.round++
	for {
		q := s.pickQueue()
		if q == nil {
			return
		}
		d, urgent := s.choose(q)
		if d == nil {
			q.heldRound = s.round
			continue
		}
		s.assign(d, urgent, now)
	}
}

// pickQueue returns the ready queue to take the next job from, or nil.
// Among the queues whose class a free worker can build, the project with
// the fewest running jobs per share goes first, then the policy's order
// of the queues' tops.
func (s *Scheduler) pickQueue() *readyQueue {
	var best *readyQueue
	bestUsage, bestVTime := math.Inf(1), 0.0
	for _, c := range s.classOrder {
		if c.ready == 0 || !s.classHasFreeWorker(c) {
			continue
		}
		for _, q := range c.queues {
			if len(q.items) == 0 || q.heldRound == s.round {
				continue
			}
			usage := float64(q.project.running) / q.project.share
			vtime := s.projectVTime(q.project)
			if best == nil || usage < bestUsage || usage == bestUsage && (vtime < bestVTime || vtime == bestVTime && s.less(q.items[0], best.items[0])) {
				best, bestUsage, bestVTime = q, usage, vtime
			}
		}
	}
	return best
}

// choose returns the derivation of q to assign next, or nil when every
// candidate should wait for a busy worker. Other policies, and
// PolicyGradient when q's top is urgent, take the top. Otherwise the
// candidates are the first Config.LocalityWindow derivations of q, or all
// of them when every one fits a free slot now. The candidate whose inputs
// a free worker lacks the fewest bytes of wins, because a job that is not
// urgent can wait without delaying the end of the evaluations.
func (s *Scheduler) choose(q *readyQueue) (d *drv, urgent bool) {
	top := q.items[0]
	if s.cfg.Policy != PolicyGradient || s.urgent(top) {
		return top, true
	}

	s.free = s.free[:0]
	freeSlots := 0
	for _, w := range s.workers {
		if w.free() > 0 && w.canRun(top.class) {
			s.free = append(s.free, w)
			freeSlots += w.free()
		}
	}

	// With a slot free for every ready derivation there is no queue to
	// shorten, so a derivation may wait for the busy worker that holds
	// its inputs.
	spare := top.class.ready <= freeSlots
	window := q.items
	if !spare {
		// The first entries of the heap's array are its top levels: not
		// exactly the highest priorities, but all high ones.
		window = q.items[:min(len(q.items), s.cfg.LocalityWindow)]
	}

	var best *drv
	var bestBytes uint64
	for _, d := range window {
		bytes := s.minFetch(d, s.free)
		if spare && s.hold(d, bytes) {
			continue
		}
		if best == nil || bytes < bestBytes || bytes == bestBytes && s.less(d, best) {
			best, bestBytes = d, bytes
		}
	}
	return best, false
}

// hold reports whether d, which is not urgent, should wait for a busy
// worker that lacks fewer of its inputs than the best free worker, which
// lacks freeBytes, because that saves fetching for longer than
// Config.HoldThreshold.
func (s *Scheduler) hold(d *drv, freeBytes uint64) bool {
	threshold := s.cfg.HoldThreshold.Seconds() * s.cfg.FetchBandwidth
	if float64(freeBytes) <= threshold || s.urgent(d) {
		return false
	}
	s.busy = s.busy[:0]
	for _, w := range s.workers {
		if w.free() == 0 && !w.away && w.canRun(d.class) {
			s.busy = append(s.busy, w)
		}
	}
	busyBytes := s.minFetch(d, s.busy)
	return busyBytes < freeBytes && float64(freeBytes-busyBytes) > threshold
}

// urgent reports whether d is on or near the estimated critical path: its
// priority is at least 1 - Config.UrgencyMargin times the estimated time
// left, the larger of the highest priority and the remaining work spread
// over all slots.
func (s *Scheduler) urgent(d *drv) bool {
	left := d.priority
	if s.capacity > 0 {
		left = max(left, s.remainingWork/s.capacity)
	}
	return d.priority >= (1-s.cfg.UrgencyMargin)*left
}

// minFetch returns the fewest bytes of d's inputs that one of workers
// lacks, or math.MaxUint64 for no workers.
func (s *Scheduler) minFetch(d *drv, workers []*worker) uint64 {
	best := uint64(math.MaxUint64)
	for _, w := range workers {
		var bytes uint64
		for _, in := range d.inputs {
			if !w.hasOutputs(in) {
				bytes += in.outputSize
				if bytes >= best {
					break
				}
			}
		}
		best = min(best, bytes)
		if best == 0 {
			break
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
func (s *Scheduler) assign(d *drv, urgent bool, now time.Time) {
	chain := []*drv{d}
	if s.cfg.Policy == PolicyGradient {
		chain = s.extendChain(chain)
	}

	inputs := s.externalInputs(chain)
	exclusive := urgent && s.cfg.Policy == PolicyGradient && slices.ContainsFunc(chain, func(x *drv) bool { return x.parallel })
	w, score := s.place(chain, inputs, exclusive)
	score.Urgent = urgent
	s.startJob(w, chain, inputs, score, now)
}

// startJob makes a job of chain on w, which gets w to itself when
// score.Exclusive is set, and emits its Assign. inputs are the links'
// inputs from outside the chain.
func (s *Scheduler) startJob(w *worker, chain, inputs []*drv, score Score, now time.Time) {
	d := chain[0]
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
	vtime := s.projectVTime(j.project)
	j.project.vtime = vtime + 1/j.project.share
	s.vclock = max(s.vclock, vtime)
	if score.Exclusive {
		w.exclusive = j
	}

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

// projectVTime returns p's vtime, raised to s.vclock: a project that had
// nothing to build while others used the slots starts level with them
// instead of taking every slot until it caught up.
func (s *Scheduler) projectVTime(p *project) float64 {
	return max(p.vtime, s.vclock)
}
