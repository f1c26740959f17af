package scheduler_test

import (
	"testing"
	"time"

	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/scheduler/sim"
)

// nixpkgsGraph returns the simulator's nixpkgs-shaped graph of size
// derivations as a scheduler.Graph.
func nixpkgsGraph(b *testing.B, size int) scheduler.Graph {
	b.Helper()
	g, err := sim.Generate("nixpkgs", size, 1)
	if err != nil {
		b.Fatal(err)
	}
	out := scheduler.Graph{EvalID: "bench", Project: "bench"}
	for _, n := range g.Derivations {
		d := scheduler.Derivation{DrvPath: n.DrvPath, Name: n.Name, System: n.System, OutputSize: n.OutputSize}
		for _, in := range n.Inputs {
			d.InputDrvs = append(d.InputDrvs, g.Derivations[in].DrvPath)
		}
		out.Derivations = append(out.Derivations, d)
	}
	return out
}

func newBenchScheduler(b *testing.B, workers int) *scheduler.Scheduler {
	b.Helper()
	s, err := scheduler.New(scheduler.Config{})
	if err != nil {
		b.Fatal(err)
	}
	for i := range workers {
		w := scheduler.Worker{ID: "w" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Systems: []string{"x86_64-linux"}, Slots: 4}
		if _, err := s.AddWorker(w, time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
	return s
}

// BenchmarkAddGraph100k measures planning a 100,000-derivation graph:
// validation, ordering, ranking and the first assignments to 32 workers.
func BenchmarkAddGraph100k(b *testing.B) {
	g := nixpkgsGraph(b, 100_000)
	for b.Loop() {
		s := newBenchScheduler(b, 32)
		if _, err := s.AddGraph(g, time.Time{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJobCycle measures one job's derivations built and the job
// finished, with the assignments that refill its slot, on a
// 20,000-derivation graph and 32 workers of 4 slots.
func BenchmarkJobCycle(b *testing.B) {
	g := nixpkgsGraph(b, 20_000)
	var s *scheduler.Scheduler
	var queue []scheduler.Assign
	now := time.Time{}

	collect := func(decisions []scheduler.Decision, err error) {
		if err != nil {
			b.Fatal(err)
		}
		for _, d := range decisions {
			if a, ok := d.(scheduler.Assign); ok {
				queue = append(queue, a)
			}
		}
	}

	for b.Loop() {
		if len(queue) == 0 {
			b.StopTimer()
			s = newBenchScheduler(b, 32)
			collect(s.AddGraph(g, now))
			b.StartTimer()
		}

		a := queue[0]
		queue = queue[1:]
		now = now.Add(time.Second)
		for _, p := range a.DrvPaths {
			collect(s.DerivationBuilt(a.JobID, p, now))
		}
		collect(s.JobFinished(a.JobID, now))
	}
}
