package scheduler

import (
	"container/heap"
	"time"
)

// readyQueue holds the ready derivations of one class and one project,
// the one to build first at the top.
type readyQueue struct {
	project *project
	items   []*drv
	less    func(a, b *drv) bool
}

func (q *readyQueue) Len() int           { return len(q.items) }
func (q *readyQueue) Less(i, j int) bool { return q.less(q.items[i], q.items[j]) }

func (q *readyQueue) Swap(i, j int) {
	q.items[i], q.items[j] = q.items[j], q.items[i]
	q.items[i].heapIndex = i
	q.items[j].heapIndex = j
}

func (q *readyQueue) Push(x any) {
	d := x.(*drv)
	d.heapIndex = len(q.items)
	q.items = append(q.items, d)
}

func (q *readyQueue) Pop() any {
	last := len(q.items) - 1
	d := q.items[last]
	q.items[last] = nil
	q.items = q.items[:last]
	d.heapIndex = -1
	return d
}

// lessFunc returns the order of ready derivations under policy p: true
// when a goes before b. Every order ends with readySeq, which is unique,
// so the order is total and the Scheduler deterministic.
func lessFunc(p Policy) func(a, b *drv) bool {
	switch p {
	case PolicyHydra:
		// Hydra's dispatcher (src/hydra-queue-runner/dispatcher.cc) sorts
		// runnable steps by more required system features, then more
		// direct reverse dependencies, then the oldest build. Its global
		// and local priorities have no counterpart here.
		return func(a, b *drv) bool {
			if len(a.class.features) != len(b.class.features) {
				return len(a.class.features) > len(b.class.features)
			}
			if len(a.dependents) != len(b.dependents) {
				return len(a.dependents) > len(b.dependents)
			}
			return a.readySeq < b.readySeq
		}
	case PolicyFIFO:
		return func(a, b *drv) bool {
			return a.readySeq < b.readySeq
		}
	default:
		return func(a, b *drv) bool {
			if a.priority != b.priority {
				return a.priority > b.priority
			}
			if a.dependentCount != b.dependentCount {
				return a.dependentCount > b.dependentCount
			}
			return a.readySeq < b.readySeq
		}
	}
}

// queueFor returns the ready queue of d's class and owning project.
func (s *Scheduler) queueFor(d *drv) *readyQueue {
	p := d.evals[0].project
	for _, q := range d.class.queues {
		if q.project == p {
			return q
		}
	}
	q := &readyQueue{project: p, less: s.less}
	d.class.queues = append(d.class.queues, q)
	return q
}

// enqueue makes d ready and queues it, or postpones it while a peer is
// building it.
func (s *Scheduler) enqueue(d *drv, now time.Time) {
	if !d.postponedUntil.IsZero() && now.Before(d.postponedUntil) {
		d.state = StatePostponed
		return
	}
	d.state = StateReady
	s.seq++
	d.readySeq = s.seq
	s.pushReady(d)

	if !s.classHasWorker(d.class) {
		s.setNoWorker(d)
	}
}

// pushReady adds a ready d to the queue of its class and owning project.
func (s *Scheduler) pushReady(d *drv) {
	heap.Push(s.queueFor(d), d)
	d.class.ready++
}

// dequeue removes d from its queue, if it is in one.
func (s *Scheduler) dequeue(d *drv) {
	if d.heapIndex < 0 {
		return
	}
	heap.Remove(s.queueFor(d), d.heapIndex)
	d.class.ready--
}

// fix restores the order of d's queue after d's priority changed.
func (s *Scheduler) fix(d *drv) {
	if d.heapIndex >= 0 {
		heap.Fix(s.queueFor(d), d.heapIndex)
	}
}
