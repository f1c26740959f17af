package sim

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/gradient-ci/gradient/scheduler"
)

// optimalMakespan returns the shortest makespan of any schedule of g on
// slots with the given speeds, found by exhaustive search. It is for
// graphs of a few derivations only.
//
// Every schedule can be shifted left, without moving a finish later, into
// one where each derivation starts at the later of the time its slot
// becomes free and the time its inputs are built. Such a schedule is
// determined by the order of the starts and the slot of each derivation.
// The search tries every start order that respects the inputs and every
// slot. It prunes partial schedules that already end no sooner than the
// best complete one.
func optimalMakespan(g *Graph, speeds []float64) float64 {
	n := len(g.Derivations)
	finish := make([]float64, n)
	done := make([]bool, n)
	remaining := 0
	for i, d := range g.Derivations {
		if d.Cached {
			done[i] = true
		} else {
			remaining++
		}
	}
	slotFree := make([]float64, len(speeds))
	best := math.Inf(1)

	var search func(left int, makespan float64)
	search = func(left int, makespan float64) {
		if makespan >= best {
			return
		}
		if left == 0 {
			best = makespan
			return
		}
		for i, d := range g.Derivations {
			if done[i] {
				continue
			}
			ready, inputsBuilt := true, 0.0
			for _, in := range d.Inputs {
				if !done[in] {
					ready = false
					break
				}
				inputsBuilt = max(inputsBuilt, finish[in])
			}
			if !ready {
				continue
			}
			for k, speed := range speeds {
				// Slots of the same speed that become free at the same
				// time give the same schedules, so try only the first.
				duplicate := false
				for j := 0; j < k; j++ {
					if speeds[j] == speed && slotFree[j] == slotFree[k] {
						duplicate = true
						break
					}
				}
				if duplicate {
					continue
				}

				start := max(slotFree[k], inputsBuilt)
				end := start + d.BuildTime/speed
				previous := slotFree[k]
				done[i], finish[i], slotFree[k] = true, end, end
				search(left-1, max(makespan, end))
				done[i], finish[i], slotFree[k] = false, 0, previous
			}
		}
	}
	search(remaining, 0)
	if remaining == 0 {
		return 0
	}
	return best
}

// randomSmallGraph returns a random graph of up to maxSize derivations
// with integer build times from 1 to 6 s, each derivation depending on
// up to three earlier ones, and about one in ten cached.
func randomSmallGraph(rng *rand.Rand, maxSize int) *Graph {
	g := &Graph{}
	n := 1 + rng.IntN(maxSize)
	for i := 0; i < n; i++ {
		node := Node{
			DrvPath:   fmt.Sprintf("/nix/store/%d-d%d.drv", i, i),
			Name:      fmt.Sprintf("d%d-1.0", i),
			System:    "x86_64-linux",
			BuildTime: float64(1 + rng.IntN(6)),
			Cached:    rng.IntN(10) == 0,
		}
		for k := rng.IntN(4); k > 0 && i > 0; k-- {
			in := rng.IntN(i)
			if !slices.Contains(node.Inputs, in) {
				node.Inputs = append(node.Inputs, in)
			}
		}
		g.Derivations = append(g.Derivations, node)
	}
	return g
}

// slotSpeeds lists the speed of each slot of opts, for optimalMakespan.
func slotSpeeds(opts Options) []float64 {
	var speeds []float64
	for i := 0; i < opts.Workers; i++ {
		for c := 0; c < opts.Cores; c++ {
			speeds = append(speeds, opts.Speeds[i%len(opts.Speeds)])
		}
	}
	return speeds
}

// Every bound must be at most the optimal makespan. The simulator's
// makespan under each policy, with nothing to fetch, must be at least the
// optimum, which also checks that the search does not overshoot.
func TestBoundsNeverAboveOptimum(t *testing.T) {
	const tolerance = 1e-9
	rng := rand.New(rand.NewPCG(11, 13))
	speedSets := [][]float64{{1}, {2}, {1, 2}, {1.5, 1, 3}}
	tight := 0
	const graphs = 500
	for round := 0; round < graphs; round++ {
		g := randomSmallGraph(rng, 9)
		opts := mustDefaults(t, Options{
			Workers: 1 + rng.IntN(4),
			Cores:   1,
			Speeds:  speedSets[rng.IntN(len(speedSets))],
		})
		name := fmt.Sprintf("graph %d (%d derivations, speeds %v, %d workers)", round, len(g.Derivations), opts.Speeds, opts.Workers)

		b := computeBounds(g, opts)
		optimum := optimalMakespan(g, slotSpeeds(opts))
		if b.criticalPath > optimum+tolerance {
			t.Errorf("%s: critical path %v, above the optimum %v", name, b.criticalPath, optimum)
		}
		if b.workPerSlot > optimum+tolerance {
			t.Errorf("%s: work per slot %v, above the optimum %v", name, b.workPerSlot, optimum)
		}
		if b.release > optimum+tolerance {
			t.Errorf("%s: release bound %v, above the optimum %v", name, b.release, optimum)
		}
		if b.release < b.lower-tolerance {
			t.Errorf("%s: release bound %v, below the lower bound %v", name, b.release, b.lower)
		}
		if math.Abs(b.release-optimum) <= tolerance {
			tight++
		}

		for _, policy := range scheduler.Policies {
			o := opts
			o.Policy = policy
			r, err := RunGraph(context.Background(), g, o)
			if err != nil {
				t.Fatalf("%s: RunGraph(%s) = %v", name, policy, err)
			}
			if r.MakespanS < optimum-tolerance {
				t.Errorf("%s: %s makespan %v, below the optimum %v", name, policy, r.MakespanS, optimum)
			}
		}
	}
	// The release bound should be reached often on graphs this small. If
	// it never is, the search or the bound is probably wrong.
	if tight < graphs/4 {
		t.Errorf("release bound equals the optimum on %d of %d graphs, want at least %d", tight, graphs, graphs/4)
	}
	t.Logf("release bound equals the optimum on %d of %d graphs", tight, graphs)
}

// A chain of two followed by four leaves runs on two slots. The critical
// path and the work per slot are both 3 s. The leaves cannot start before
// 2 s and need 2 s on two slots, so no schedule ends before 4 s.
func TestBoundsChainThenLeaves(t *testing.T) {
	g := &Graph{Derivations: []Node{
		{DrvPath: "/nix/store/0-a.drv", BuildTime: 1},
		{DrvPath: "/nix/store/1-b.drv", BuildTime: 1, Inputs: []int{0}},
		{DrvPath: "/nix/store/2-c.drv", BuildTime: 1, Inputs: []int{1}},
		{DrvPath: "/nix/store/3-d.drv", BuildTime: 1, Inputs: []int{1}},
		{DrvPath: "/nix/store/4-e.drv", BuildTime: 1, Inputs: []int{1}},
		{DrvPath: "/nix/store/5-f.drv", BuildTime: 1, Inputs: []int{1}},
	}}
	opts := mustDefaults(t, Options{Workers: 2, Cores: 1})

	b := computeBounds(g, opts)
	if b.lower != 3 {
		t.Errorf("lower bound = %v, want 3", b.lower)
	}
	if b.release != 4 {
		t.Errorf("release bound = %v, want 4", b.release)
	}
	if got := optimalMakespan(g, slotSpeeds(opts)); got != 4 {
		t.Errorf("optimalMakespan = %v, want 4", got)
	}
}

// With parallel builds no exhaustive search is practical, but no policy
// may finish before the bounds, which are proved for that model too.
func TestBoundsBelowParallelRuns(t *testing.T) {
	const tolerance = 1e-9
	rng := rand.New(rand.NewPCG(17, 19))
	for round := 0; round < 300; round++ {
		g := randomSmallGraph(rng, 12)
		for i := range g.Derivations {
			g.Derivations[i].Cores = rng.IntN(9)
		}
		opts := mustDefaults(t, Options{
			Workers: 1 + rng.IntN(3),
			Cores:   1 + rng.IntN(4),
			Speeds:  [][]float64{{1}, {1, 2}, {1.5, 1, 3}}[rng.IntN(3)],
		})
		b := computeBounds(g, opts)
		for _, policy := range scheduler.Policies {
			o := opts
			o.Policy = policy
			r, err := RunGraph(context.Background(), g, o)
			if err != nil {
				t.Fatalf("graph %d: RunGraph(%s) = %v", round, policy, err)
			}
			if r.MakespanS < b.release-tolerance {
				t.Errorf("graph %d (%d derivations, %d workers of %d cores, speeds %v): %s makespan %v, below the release bound %v",
					round, len(g.Derivations), opts.Workers, opts.Cores, opts.Speeds, policy, r.MakespanS, b.release)
			}
		}
	}
}
