package sim

import (
	"cmp"
	"slices"
)

// makespanBounds are lower bounds on the makespan of a graph on a set of
// slots. Each holds for every schedule, not only the scheduler's.
type makespanBounds struct {
	// criticalPath is the longest path of shortest build times: each
	// build on as many cores as it can use, at the fastest speed.
	criticalPath float64
	// workPerSlot is the total work divided by the sum over workers of
	// cores times speed.
	workPerSlot float64
	// lower is the larger of criticalPath and workPerSlot.
	lower float64
	// release is the largest over times T of T plus the work that cannot
	// start before T, divided by the sum over workers of cores times
	// speed. It is at least lower.
	release float64
}

// computeBounds returns the makespan bounds of g on opts.Workers workers
// of opts.Cores cores each, worker i having speed
// opts.Speeds[i%len(opts.Speeds)]. Cached derivations take no time.
//
// The bounds hold for every schedule with these rules. A derivation with
// work p (its BuildTime) is done when it has had p core-seconds at speed
// 1, and it starts only after all its inputs are built. At any moment it
// runs on one worker and gets at most c cores of it. Here c is the
// smaller of the worker's cores and the derivation's own, which are one
// for a serial build and for every build under opts.SerialBuilds. A worker of
// speed s with k cores does at most k*s work per second in all. Fetching
// inputs, grouping derivations into jobs and sharing cores only delay
// work, so they keep the bounds valid. Let v be the highest speed, S the
// sum over workers of cores times speed, and d(i) = p(i)/(c(i)*v) the
// shortest time derivation i can take.
//
//   - Critical path. No derivation i finishes before f(i), the largest
//     f of its inputs (0 for none or cached ones) plus d(i): by
//     induction over the graph, its inputs finish no earlier than their
//     f, and it then needs d(i) at least. So the makespan C >= f(i).
//   - Work. In [0, C] the workers do at most S*C of work, so the total
//     work W <= S*C.
//   - Release. r(i) = f(i) - d(i) is the earliest start of i. For any
//     T, every derivation with r(i) >= T runs entirely inside [T, C],
//     where the workers do at most S*(C-T) of work, so C >= T + W(T)/S,
//     where W(T) is the work of those derivations. W(T) only changes at
//     release times and T + W(T)/S grows between them, so the largest
//     value is at some T = r(i). T = 0 gives the work bound, so the
//     release bound is never below lower.
//
// TestBoundsNeverAboveOptimum checks the three bounds against the optimal
// makespan found by exhaustive search on small random graphs of serial
// builds, and TestBoundsBelowParallelRuns checks that no simulated run
// with parallel builds ends before them.
func computeBounds(g *Graph, opts Options) makespanBounds {
	maxSpeed, capacity := 0.0, 0.0
	for i := 0; i < opts.Workers; i++ {
		speed := opts.Speeds[i%len(opts.Speeds)]
		maxSpeed = max(maxSpeed, speed)
		capacity += speed * float64(opts.Cores)
	}

	finish := make([]float64, len(g.Derivations))
	work, longest := 0.0, 0.0
	for i, n := range g.Derivations {
		if n.Cached {
			continue
		}
		start := 0.0
		for _, in := range n.Inputs {
			start = max(start, finish[in])
		}
		finish[i] = start + n.BuildTime/(buildCores(n, opts)*maxSpeed)
		longest = max(longest, finish[i])
		work += n.BuildTime
	}

	b := makespanBounds{
		criticalPath: longest,
		workPerSlot:  work / capacity,
		lower:        max(longest, work/capacity),
	}

	// Visit release times from the latest down, adding up the work that
	// cannot start before each.
	type release struct{ at, work float64 }
	releases := make([]release, 0, len(g.Derivations))
	for i, n := range g.Derivations {
		if !n.Cached {
			releases = append(releases, release{finish[i] - n.BuildTime/(buildCores(n, opts)*maxSpeed), n.BuildTime})
		}
	}
	slices.SortFunc(releases, func(a, b release) int { return cmp.Compare(b.at, a.at) })
	b.release = b.lower
	after := 0.0
	for _, r := range releases {
		after += r.work
		b.release = max(b.release, r.at+after/capacity)
	}
	return b
}

// buildCores returns the most cores n can get on a worker of opts.
func buildCores(n Node, opts Options) float64 {
	if opts.SerialBuilds || n.Cores <= 1 {
		return 1
	}
	return float64(min(n.Cores, opts.Cores))
}
