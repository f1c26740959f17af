package scheduler

import "math"

// place chooses the worker for a job of chain, whose links take inputs
// from outside the chain, and returns it with its Score. At least one free
// worker can build the chain's class, or pickNext would not have chosen
// it.
//
// With exclusive set, the job gets its worker to itself. That is an idle
// worker if one can build it, else the best with a free slot. The worker
// starts no other job until this one ends, so its running jobs leave
// their cores to the build as they end. That happens under one of two
// conditions. Either the slots left free elsewhere still take every other
// ready derivation of its class, or there are more ready derivations than
// free slots anyway. In the second case every slot stays busy whatever
// the choice, and the cores go to the urgent build. Otherwise a derivation would wait for
// slots whose cores the job may not keep busy to its end.
func (s *Scheduler) place(chain []*drv, inputs []*drv, exclusive bool) (*worker, Score) {
	if exclusive {
		w, score := s.placeAmong(chain, inputs, true)
		if w == nil {
			w, score = s.placeAmong(chain, inputs, false)
		}
		ready, free := chain[0].class.ready, s.freeSlots(chain[0].class)
		if ready-1 <= free-w.free() || ready > free {
			score.Exclusive = true
			return w, score
		}
	}
	return s.placeAmong(chain, inputs, false)
}

// freeSlots returns the free slots of the workers that can build c.
func (s *Scheduler) freeSlots(c *class) int {
	n := 0
	for _, w := range s.workers {
		if w.canRun(c) {
			n += w.free()
		}
	}
	return n
}

// placeAmong chooses the best worker for chain among those with a free
// slot, or among the idle ones with idleOnly set. It returns nil when
// there is no candidate.
func (s *Scheduler) placeAmong(chain []*drv, inputs []*drv, idleOnly bool) (*worker, Score) {
	estimate := 0.0
	for _, x := range chain {
		estimate += x.estimate
	}

	var best, second *worker
	var bestScore, secondScore Score
	candidates := 0
	for _, w := range s.workers {
		if w.free() == 0 || !w.canRun(chain[0].class) {
			continue
		}
		if idleOnly && (w.running > 0 || w.reserved > 0) {
			continue
		}
		candidates++
		score := s.score(w, inputs, estimate)
		if idleOnly {
			// The parallel build gets all of the worker's cores, one per
			// slot.
			score.BuildSeconds /= float64(w.Slots)
			score.Total = score.FetchSeconds + score.BuildSeconds
		}
		switch {
		case best == nil || s.better(w, score, best, bestScore):
			second, secondScore = best, bestScore
			best, bestScore = w, score
		case second == nil || s.better(w, score, second, secondScore):
			second, secondScore = w, score
		}
	}

	bestScore.Candidates = candidates
	if second != nil {
		bestScore.RunnerUp = second.ID
		bestScore.RunnerUpTotal = secondScore.Total
	}
	return best, bestScore
}

// score computes the Score of running a job with the given external inputs
// and estimated build time at speed 1 on w.
func (s *Scheduler) score(w *worker, inputs []*drv, estimate float64) Score {
	var fetch uint64
	for _, in := range inputs {
		if !w.hasOutputs(in) {
			fetch += in.outputSize
		}
	}

	sc := Score{
		FetchBytes:   fetch,
		FetchSeconds: float64(fetch) / s.cfg.FetchBandwidth,
		BuildSeconds: estimate / w.speed,
		Speed:        w.speed,
	}
	sc.Total = sc.FetchSeconds + sc.BuildSeconds
	return sc
}

// better reports whether worker a with score sa goes before worker b with
// score sb under the policy. Workers are visited in ID order, so an exact
// tie keeps the smaller ID.
func (s *Scheduler) better(a *worker, sa Score, b *worker, sb Score) bool {
	loadA := float64(a.running) / float64(a.Slots)
	loadB := float64(b.running) / float64(b.Slots)

	switch s.cfg.Policy {
	case PolicyHydra:
		// Hydra's dispatcher (src/hydra-queue-runner/dispatcher.cc) sorts
		// machines by running jobs divided by speed factor, rounded to an
		// integer, then by higher speed factor, then by more running jobs.
		ra := math.Round(float64(a.running) / a.speed)
		rb := math.Round(float64(b.running) / b.speed)
		if ra != rb {
			return ra < rb
		}
		if a.speed != b.speed {
			return a.speed > b.speed
		}
		return a.running > b.running
	case PolicyFIFO:
		return loadA < loadB
	default:
		if sa.Total != sb.Total {
			return sa.Total < sb.Total
		}
		return loadA < loadB
	}
}
