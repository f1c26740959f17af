package scheduler

import (
	"container/heap"
	"slices"
	"time"
)

// readyQueue holds the ready derivations of one class and one project,
// the one to build first at the top.
type readyQueue struct {
	project *project
	items   []*drv
	less    func(a, b *drv) bool
	// heldRound is the dispatch round in which every candidate of the
	// queue chose to wait for a busy worker.
	heldRound uint64
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
	if s.makeReady(d, now) {
		s.pushReady(d)
	}
}

// enqueueAll enqueues every derivation of ds. For a large batch it
// appends to the queues and restores their heap order once, which takes
// linear time instead of a logarithmic time per derivation.
func (s *Scheduler) enqueueAll(ds []*drv, now time.Time) {
	if len(ds) < 64 {
		for _, d := range ds {
			s.enqueue(d, now)
		}
		return
	}

	var touched []*readyQueue
	for _, d := range ds {
		if !s.makeReady(d, now) {
			continue
		}
		q := s.queueFor(d)
		if !slices.Contains(touched, q) {
			touched = append(touched, q)
		}
		d.heapIndex = len(q.items)
		q.items = append(q.items, d)
		d.class.ready++
	}
	for _, q := range touched {
		heap.Init(q)
	}
}

// makeReady sets d ready and reports true, or postpones it while a peer
// is building it and reports false.
func (s *Scheduler) makeReady(d *drv, now time.Time) bool {
	if !d.postponedUntil.IsZero() && now.Before(d.postponedUntil) {
		d.state = StatePostponed
		return false
	}
	d.state = StateReady
	s.seq++
	d.readySeq = s.seq

	if !s.classHasWorker(d.class) {
		s.setNoWorker(d)
	}
	return true
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
