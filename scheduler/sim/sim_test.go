package sim

import (
	"context"
	"errors"
	"math"
	"testing"

	"github.com/gradient-ci/gradient/scheduler"
)

func TestRunSmallGraphs(t *testing.T) {
	for _, kind := range Kinds {
		for _, policy := range scheduler.Policies {
			t.Run(kind+"/"+string(policy), func(t *testing.T) {
				size := 300
				r, err := Run(context.Background(), Options{Graph: kind, Size: size, Workers: 4, Policy: policy, Seed: 7})
				if err != nil {
					t.Fatalf("Run = %v", err)
				}
				if r.Derivations != size {
					t.Errorf("Derivations = %d, want %d", r.Derivations, size)
				}
				if r.DuplicateBuilds != 0 {
					t.Errorf("DuplicateBuilds = %d, want 0", r.DuplicateBuilds)
				}
				if r.MakespanS < r.LowerBoundS*(1-1e-9) {
					t.Errorf("MakespanS = %v, below LowerBoundS %v", r.MakespanS, r.LowerBoundS)
				}
				if r.MakespanS < r.ReleaseBoundS*(1-1e-9) {
					t.Errorf("MakespanS = %v, below ReleaseBoundS %v", r.MakespanS, r.ReleaseBoundS)
				}
				if r.ReleaseBoundS < r.LowerBoundS {
					t.Errorf("ReleaseBoundS = %v, below LowerBoundS %v", r.ReleaseBoundS, r.LowerBoundS)
				}
			})
		}
	}
}

// A chain runs one derivation at a time, so with no inputs to fetch its
// makespan is the critical path, and the gradient policy makes it one job
// of at most scheduler.DefaultMaxJobLength derivations.
func TestRunChainMakespan(t *testing.T) {
	g, err := Generate("chain", 250, 1)
	if err != nil {
		t.Fatal(err)
	}
	for i := range g.Derivations {
		g.Derivations[i].OutputSize = 0
	}

	r, err := RunGraph(context.Background(), g, Options{Workers: 3})
	if err != nil {
		t.Fatalf("RunGraph = %v", err)
	}
	if math.Abs(r.MakespanS-r.CriticalPathS) > 1e-6*r.CriticalPathS {
		t.Errorf("MakespanS = %v, want CriticalPathS %v", r.MakespanS, r.CriticalPathS)
	}
	if r.Jobs != 3 {
		t.Errorf("Jobs = %d, want 3 (250 links in jobs of at most 100)", r.Jobs)
	}
	if r.BytesMoved != 0 {
		t.Errorf("BytesMoved = %d, want 0", r.BytesMoved)
	}
}

func TestRunDeterministic(t *testing.T) {
	opts := Options{Graph: "layered", Size: 2000, Workers: 5, Seed: 3}
	first, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Run(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	if first.MakespanS != second.MakespanS || first.BytesMoved != second.BytesMoved || first.Jobs != second.Jobs {
		t.Errorf("second Run = makespan %v, bytes %d, jobs %d; want the first's %v, %d, %d",
			second.MakespanS, second.BytesMoved, second.Jobs, first.MakespanS, first.BytesMoved, first.Jobs)
	}
}

func TestRunCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := Run(ctx, Options{Graph: "fanout", Size: 20000, Workers: 1})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Run(cancelled) = %v, want context.Canceled", err)
	}
}

func TestRunInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"no workers", Options{Graph: "chain"}},
		{"negative cores", Options{Graph: "chain", Workers: 1, Cores: -1}},
		{"zero speed", Options{Graph: "chain", Workers: 1, Speeds: []float64{0}}},
		{"unknown policy", Options{Graph: "chain", Workers: 1, Policy: "random"}},
		{"unknown graph", Options{Graph: "no-such-kind-or-file", Workers: 1}},
		{"empty graph", Options{Workers: 1}},
		{"huge size", Options{Graph: "chain", Size: MaxDerivations + 1, Workers: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Run(context.Background(), tt.opts); err == nil {
				t.Errorf("Run(%+v) = nil error, want one", tt.opts)
			}
		})
	}
}

// A derivation that no worker can build stops the simulation with
// ErrStalled instead of running forever.
func TestRunStalls(t *testing.T) {
	g := &Graph{Derivations: []Node{
		{DrvPath: "/nix/store/a.drv", Name: "a", System: "x86_64-linux", BuildTime: 1},
		{DrvPath: "/nix/store/b.drv", Name: "b", System: "x86_64-linux", Features: []string{"kvm"}, BuildTime: 1, Inputs: []int{0}},
	}}
	sm, err := newSimulation(g, mustDefaults(t, Options{Workers: 1}))
	if err != nil {
		t.Fatal(err)
	}
	// Register a worker without kvm by hand, in place of run's workers.
	sm.opts.Workers = 0
	if _, err := sm.sched.AddWorker(scheduler.Worker{ID: "w", Systems: []string{"x86_64-linux"}, Slots: 1}, epoch); err != nil {
		t.Fatal(err)
	}
	sm.workers["w"] = &simWorker{id: "w", speed: 1, store: make([]bool, 2)}
	if err := sm.run(context.Background()); !errors.Is(err, ErrStalled) {
		t.Errorf("run = %v, want ErrStalled", err)
	}
}

func mustDefaults(t *testing.T, o Options) Options {
	t.Helper()
	o, err := o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func TestGenerateSizes(t *testing.T) {
	for _, kind := range Kinds {
		for _, size := range []int{1, 2, 3, 57, 1000} {
			g, err := Generate(kind, size, 1)
			if err != nil {
				t.Fatalf("Generate(%s, %d) = %v", kind, size, err)
			}
			if len(g.Derivations) != size {
				t.Errorf("Generate(%s, %d) = %d derivations, want %d", kind, size, len(g.Derivations), size)
			}
			for i, n := range g.Derivations {
				for _, in := range n.Inputs {
					if in >= i {
						t.Fatalf("Generate(%s, %d): derivation %d has input %d, not before it", kind, size, i, in)
					}
				}
			}
		}
	}
}

func BenchmarkRunNixpkgs(b *testing.B) {
	for b.Loop() {
		if _, err := Run(context.Background(), Options{Graph: "nixpkgs", Workers: 32, Seed: 1}); err != nil {
			b.Fatal(err)
		}
	}
}

// On one worker of four cores, a serial build gets one core and a
// parallel one the other three while both run, then all four.
func TestRunSharesCores(t *testing.T) {
	g := &Graph{Derivations: []Node{
		{DrvPath: "/nix/store/0-root.drv", Name: "root-1", System: "x86_64-linux", BuildTime: 8, Cores: 64},
		{DrvPath: "/nix/store/1-serial.drv", Name: "serial-1", System: "x86_64-linux", BuildTime: 30, Inputs: []int{0}},
		{DrvPath: "/nix/store/2-parallel.drv", Name: "parallel-1", System: "x86_64-linux", BuildTime: 120, Cores: 64, Inputs: []int{0}},
	}}
	r, err := RunGraph(context.Background(), g, Options{Workers: 1, Cores: 4})
	if err != nil {
		t.Fatalf("RunGraph = %v", err)
	}
	// The root alone takes 8/4 = 2 s. For 30 s the serial build has one
	// core and the parallel one three, which leaves it 120-90 = 30
	// core-seconds, done on four cores in 7.5 s.
	if want := 2 + 30 + 7.5; math.Abs(r.MakespanS-want) > 1e-9 {
		t.Errorf("MakespanS = %v, want %v", r.MakespanS, want)
	}
	if want := 2 + 120.0/4; math.Abs(r.CriticalPathS-want) > 1e-9 {
		t.Errorf("CriticalPathS = %v, want %v", r.CriticalPathS, want)
	}
	if want := (8 + 30 + 120) / 4.0; math.Abs(r.WorkPerSlotS-want) > 1e-9 {
		t.Errorf("WorkPerSlotS = %v, want %v", r.WorkPerSlotS, want)
	}

	serial, err := RunGraph(context.Background(), g, Options{Workers: 1, Cores: 4, SerialBuilds: true})
	if err != nil {
		t.Fatalf("RunGraph(SerialBuilds) = %v", err)
	}
	if want := 8 + 120.0; math.Abs(serial.MakespanS-want) > 1e-9 {
		t.Errorf("SerialBuilds: MakespanS = %v, want %v", serial.MakespanS, want)
	}
}

// SerialBuilds gives the same run as a graph without parallel builds.
func TestRunSerialBuildsIgnoresCores(t *testing.T) {
	g, err := Generate("nixpkgs", 2000, 5)
	if err != nil {
		t.Fatal(err)
	}
	parallel := 0
	for _, n := range g.Derivations {
		if n.Cores > 1 {
			parallel++
		}
	}
	if parallel == 0 {
		t.Fatal("the nixpkgs graph has no parallel build")
	}
	serial, err := RunGraph(context.Background(), g, Options{Workers: 6, Seed: 5, SerialBuilds: true})
	if err != nil {
		t.Fatalf("RunGraph(SerialBuilds) = %v", err)
	}

	for i := range g.Derivations {
		g.Derivations[i].Cores = 0
	}
	plain, err := RunGraph(context.Background(), g, Options{Workers: 6, Seed: 5})
	if err != nil {
		t.Fatalf("RunGraph = %v", err)
	}
	serial.SchedulerS, plain.SchedulerS = 0, 0
	serial.PlanS, plain.PlanS = 0, 0
	serial.PlanCPUS, plain.PlanCPUS = 0, 0
	serial.MaxDecisionUS, plain.MaxDecisionUS = 0, 0
	serial.MaxCallUS, plain.MaxCallUS = 0, 0
	serial.SerialBuilds = false
	if serial != plain {
		t.Errorf("SerialBuilds run = %+v, want the run without parallel builds %+v", serial, plain)
	}
}

// Output sizes near the top of uint64 saturate bytes_moved instead of
// wrapping around.
func TestRunBytesMovedSaturates(t *testing.T) {
	g := &Graph{Derivations: []Node{
		{DrvPath: "/nix/store/0-a.drv", Name: "a-1", System: "x86_64-linux", BuildTime: 1, OutputSize: math.MaxUint64 - 1},
		{DrvPath: "/nix/store/1-b.drv", Name: "b-1", System: "x86_64-linux", BuildTime: 1, OutputSize: math.MaxUint64 - 1},
		{DrvPath: "/nix/store/2-c.drv", Name: "c-1", System: "x86_64-linux", BuildTime: 1, Inputs: []int{0, 1}},
		{DrvPath: "/nix/store/3-d.drv", Name: "d-1", System: "x86_64-linux", BuildTime: 1, Inputs: []int{0, 1}},
	}}
	r, err := RunGraph(context.Background(), g, Options{Workers: 3, Cores: 1, Policy: scheduler.PolicyHydra})
	if err != nil {
		t.Fatalf("RunGraph = %v", err)
	}
	if r.BytesMoved != math.MaxUint64 {
		t.Errorf("BytesMoved = %d, want the saturated %d", r.BytesMoved, uint64(math.MaxUint64))
	}
}
