package scheduler

import (
	"cmp"
	"fmt"
	"slices"
	"time"
)

// AddGraph adds an evaluation's derivation graph and assigns the jobs that
// can start. A derivation the Scheduler already holds for another
// evaluation is shared: it is built once, and its result counts for both.
// A derivation with a PeerETA is postponed first, as PeerBuilding does,
// and one with HeldFor is held for that worker.
// A derivation marked Cached that another evaluation is still waiting for
// counts as built from now on, unless a job already builds it.
//
// A graph that is invalid, cyclic or whose EvalID is in use is rejected
// whole, with an error wrapping ErrInvalidGraph or ErrDuplicate.
func (s *Scheduler) AddGraph(g Graph, now time.Time) ([]Decision, error) {
	if err := validateGraph(g); err != nil {
		return nil, err
	}
	if _, ok := s.evals[g.EvalID]; ok {
		return nil, fmt.Errorf("add graph %q: %w", g.EvalID, ErrDuplicate)
	}
	order, err := s.newDerivationOrder(g)
	if err != nil {
		return nil, err
	}

	e := &evaluation{id: g.EvalID, project: s.projectFor(g.Project)}
	e.done.EvalID = g.EvalID
	s.evals[e.id] = e

	// Join the derivations other evaluations already hold.
	var nowCached []*drv
	for _, gd := range g.Derivations {
		d, ok := s.drvs[gd.DrvPath]
		if !ok {
			continue
		}
		d.evals = append(d.evals, e)
		e.drvs = append(e.drvs, d)
		if d.state.terminal() {
			e.count(d)
			continue
		}
		e.pending++
		if gd.Cached && d.state != StateAssigned {
			nowCached = append(nowCached, d)
		}
	}

	created := s.createDerivations(g, order, e)
	s.rank(created)

	// Postpone what peers build before anything is queued, so that no
	// job takes it first.
	for _, gd := range g.Derivations {
		if gd.PeerETA.IsZero() || gd.Cached {
			continue
		}
		if d, ok := s.drvs[gd.DrvPath]; ok {
			s.postpone(d, gd.PeerETA, now)
		}
	}

	// Hold what a worker may still be building, for the same reason.
	for _, gd := range g.Derivations {
		if gd.HeldFor == "" || gd.Cached {
			continue
		}
		if d, ok := s.drvs[gd.DrvPath]; ok {
			s.holdFor(d, gd.HeldFor, gd.HeldUntil, now)
		}
	}

	var ready []*drv
	for _, d := range created {
		if d.state == StateWaiting && d.missing == 0 {
			ready = append(ready, d)
		}
	}
	s.enqueueAll(ready, now)
	for _, d := range nowCached {
		if !d.state.terminal() && d.state != StateAssigned {
			s.markBuilt(d, true, now)
		}
	}
	for _, w := range s.workers {
		s.adoptHolds(w, now)
	}

	if e.pending == 0 && s.evals[e.id] == e {
		s.finishEval(e)
	}
	s.dispatch(now)
	return s.take(), nil
}

// newDerivationOrder returns the indexes of g's derivations that the
// Scheduler does not hold yet, each after its inputs, or an error when
// they form a cycle. Derivations it holds already cannot be part of a
// cycle, because their inputs never change.
func (s *Scheduler) newDerivationOrder(g Graph) ([]int, error) {
	index := make(map[string]int, len(g.Derivations))
	for i, gd := range g.Derivations {
		if _, ok := s.drvs[gd.DrvPath]; !ok {
			index[gd.DrvPath] = i
		}
	}

	// Kahn's algorithm over the new derivations: waiting[i] counts the new
	// inputs of i that are not yet in order.
	waiting := make([]int, len(g.Derivations))
	users := make(map[int][]int)
	var order []int
	for i, gd := range g.Derivations {
		if _, ok := index[gd.DrvPath]; !ok {
			continue
		}
		if !gd.Cached {
			for _, in := range gd.InputDrvs {
				if j, ok := index[in]; ok {
					waiting[i]++
					users[j] = append(users[j], i)
				}
			}
		}
		if waiting[i] == 0 {
			order = append(order, i)
		}
	}
	for next := 0; next < len(order); next++ {
		for _, u := range users[order[next]] {
			waiting[u]--
			if waiting[u] == 0 {
				order = append(order, u)
			}
		}
	}

	if len(order) < len(index) {
		for i, w := range waiting {
			if w > 0 {
				return nil, fmt.Errorf("%w: %q is part of a dependency cycle", ErrInvalidGraph, g.Derivations[i].DrvPath)
			}
		}
	}
	return order, nil
}

// createDerivations adds the derivations of g at the indexes in order,
// which lists inputs first, and returns those that wait to be built.
func (s *Scheduler) createDerivations(g Graph, order []int, e *evaluation) []*drv {
	var created []*drv
	for _, i := range order {
		gd := g.Derivations[i]
		d := &drv{
			path:       gd.DrvPath,
			pname:      PName(cmp.Or(gd.Name, gd.DrvPath)),
			outputs:    slices.Clone(gd.Outputs),
			outputSize: gd.OutputSize,
			parallel:   gd.Parallel,
			evals:      []*evaluation{e},
			heapIndex:  -1,
		}
		s.drvs[d.path] = d
		e.drvs = append(e.drvs, d)

		if gd.Cached {
			d.state = StateBuilt
			d.cached = true
			e.count(d)
			continue
		}

		d.class = s.classFor(gd.System, gd.Features)
		d.estimate = s.estimateSeconds(d.pname, gd.System)
		d.state = StateWaiting
		s.linkInputs(d, gd.InputDrvs)

		if d.failedDep != "" {
			d.state = StateDependencyFailed
			d.reason = DependencyFailedReason
			e.count(d)
			s.emit(DependencyFailed{EvalIDs: []string{e.id}, DrvPath: d.path, FailedDep: d.failedDep})
			continue
		}
		e.pending++
		d.inWork = true
		s.remainingWork += d.estimate
		created = append(created, d)
	}
	return created
}

// linkInputs connects d to its inputs, which the Scheduler holds already,
// and counts those not built. An input that failed makes d fail too.
func (s *Scheduler) linkInputs(d *drv, inputs []string) {
	var seen map[string]bool
	if len(inputs) > 16 {
		seen = make(map[string]bool, len(inputs))
	}

	d.inputs = make([]*drv, 0, len(inputs))
	for _, path := range inputs {
		in := s.drvs[path]
		if seen != nil {
			if seen[path] {
				continue
			}
			seen[path] = true
		} else if slices.Contains(d.inputs, in) {
			continue
		}
		d.inputs = append(d.inputs, in)

		switch in.state {
		case StateBuilt:
		case StateFailed:
			d.failedDep = cmp.Or(d.failedDep, in.path)
		case StateDependencyFailed:
			d.failedDep = cmp.Or(d.failedDep, in.failedDep)
		default:
			d.missing++
		}
	}

	if d.failedDep != "" {
		return
	}
	for _, in := range d.inputs {
		if !in.state.terminal() {
			in.dependents = append(in.dependents, d)
		}
	}
}

// rank computes the priority and the dependents sketch of the derivations
// in created, which lists inputs first, and raises those of the inputs the
// Scheduler held before.
func (s *Scheduler) rank(created []*drv) {
	for i := len(created) - 1; i >= 0; i-- {
		s.rankFromDependents(created[i])
	}

	// Propagate to older inputs, which gained dependents. Both the
	// priority and the sketch only grow, so the walk ends.
	var stack []*drv
	for _, d := range created {
		for _, in := range d.inputs {
			if !in.state.terminal() && s.raiseFrom(in, d) {
				stack = append(stack, in)
			}
		}
	}
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		s.fix(d)
		for _, in := range d.inputs {
			if !in.state.terminal() && s.raiseFrom(in, d) {
				stack = append(stack, in)
			}
		}
	}
}

// rankFromDependents sets d's priority and sketch from its dependents.
func (s *Scheduler) rankFromDependents(d *drv) {
	longest := 0.0
	for _, dep := range d.dependents {
		if dep.removed || dep.state.terminal() {
			continue
		}
		longest = max(longest, dep.priority)
		d.sketch.add(hashPath(dep.path))
		d.sketch.merge(&dep.sketch)
	}
	d.priority = d.estimate + longest
	d.dependentCount = d.sketch.estimate()
}

// raiseFrom raises in's priority and sketch to account for its dependent
// dep, and reports whether either changed.
func (s *Scheduler) raiseFrom(in, dep *drv) bool {
	changed := false
	if p := in.estimate + dep.priority; p > in.priority {
		in.priority = p
		changed = true
	}
	if in.sketch.add(hashPath(dep.path)) {
		changed = true
	}
	if in.sketch.merge(&dep.sketch) {
		changed = true
	}
	if changed {
		in.dependentCount = in.sketch.estimate()
	}
	return changed
}

// count adds a terminal d to e's tally.
func (e *evaluation) count(d *drv) {
	switch {
	case d.state == StateBuilt && d.cached:
		e.done.Cached++
	case d.state == StateBuilt:
		e.done.Built++
	case d.state == StateFailed:
		e.done.Failed++
	case d.state == StateDependencyFailed:
		e.done.DependencyFailed++
	}
}

// markBuilt records d as built, by a job or, when cached is set, without
// one, and queues the dependents it unblocks.
func (s *Scheduler) markBuilt(d *drv, cached bool, now time.Time) {
	s.dequeue(d)
	d.state = StateBuilt
	d.cached = cached
	d.reason = ""
	done := s.settle(d, nil)

	var ready []*drv
	for _, dep := range d.dependents {
		if dep.removed || dep.state.terminal() {
			continue
		}
		dep.missing--
		if dep.missing == 0 && dep.state == StateWaiting {
			ready = append(ready, dep)
		}
	}
	d.dependents = nil
	s.enqueueAll(ready, now)

	for _, e := range done {
		s.finishEval(e)
	}
}

// markFailed records d's build as failed and every transitive dependent
// as never built.
func (s *Scheduler) markFailed(d *drv, reason string) {
	s.dequeue(d)
	d.state = StateFailed
	d.failReason = reason
	d.reason = ""
	done := s.settle(d, nil)

	queue := []*drv{d}
	for len(queue) > 0 {
		x := queue[0]
		queue = queue[1:]
		for _, dep := range x.dependents {
			if dep.removed || dep.state.terminal() {
				continue
			}
			s.dequeue(dep)
			dep.state = StateDependencyFailed
			dep.failedDep = d.path
			dep.reason = DependencyFailedReason
			done = s.settle(dep, done)

			evalIDs := make([]string, len(dep.evals))
			for i, e := range dep.evals {
				evalIDs[i] = e.id
			}
			s.emit(DependencyFailed{EvalIDs: evalIDs, DrvPath: dep.path, FailedDep: d.path})
			queue = append(queue, dep)
		}
		x.dependents = nil
	}

	for _, e := range done {
		s.finishEval(e)
	}
}

// settle counts the now terminal d in its evaluations and appends to done
// those that have nothing pending any more.
func (s *Scheduler) settle(d *drv, done []*evaluation) []*evaluation {
	s.leaveWork(d)
	for _, e := range d.evals {
		e.count(d)
		e.pending--
		if e.pending == 0 {
			done = append(done, e)
		}
	}
	return done
}

// finishEval reports e done and drops it, with the derivations no other
// evaluation contains.
func (s *Scheduler) finishEval(e *evaluation) {
	delete(s.evals, e.id)
	s.emit(e.done)

	// With no other evaluation left, nothing refers to the derivations
	// any more, and a new map is much cheaper than visiting each, which
	// matters for graphs of 100,000 derivations.
	if len(s.evals) == 0 {
		s.drvs = make(map[string]*drv)
		return
	}

	orphans := 0
	for _, d := range e.drvs {
		if len(d.evals) == 1 {
			d.evals = nil
			orphans++
			continue
		}
		d.evals = slices.DeleteFunc(d.evals, func(x *evaluation) bool { return x == e })
	}

	// When e held every derivation, a new map is cheaper than deleting
	// each entry.
	if orphans == len(s.drvs) {
		s.drvs = make(map[string]*drv)
		return
	}
	for _, d := range e.drvs {
		if len(d.evals) == 0 && s.drvs[d.path] == d {
			delete(s.drvs, d.path)
		}
	}
}

// leaveWork takes d's estimate out of the remaining work, once.
func (s *Scheduler) leaveWork(d *drv) {
	if d.inWork {
		d.inWork = false
		s.remainingWork -= d.estimate
	}
}
