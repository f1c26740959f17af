package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"
)

func TestPName(t *testing.T) {
	tests := []struct{ name, want string }{
		{"hello-2.12", "hello"},
		{"gcc-wrapper-13.2.0", "gcc-wrapper"},
		{"python3.11-requests-2.31.0", "python3.11-requests"},
		{"bootstrap-tools", "bootstrap-tools"},
		{"source", "source"},
		{"linux-6.6-rc1", "linux"},
		{"foo-", "foo-"},
		{"", ""},
	}
	for _, tt := range tests {
		if got := PName(tt.name); got != tt.want {
			t.Errorf("PName(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"zero value", Config{}, false},
		{"hydra", Config{Policy: PolicyHydra}, false},
		{"unknown policy", Config{Policy: "lifo"}, true},
		{"tiny build time", Config{DefaultBuildTime: time.Microsecond}, true},
		{"negative bandwidth", Config{FetchBandwidth: -1}, true},
		{"negative slack", Config{PeerSlack: -time.Second}, true},
		{"negative attempts", Config{MaxAttempts: -1}, true},
		{"negative job length", Config{MaxJobLength: -1}, true},
		{"weight above one", Config{HistoryWeight: 1.5}, true},
		{"negative window", Config{LocalityWindow: -1}, true},
		{"margin above one", Config{UrgencyMargin: 2}, true},
		{"negative hold", Config{HoldThreshold: -time.Second}, true},
		{"zero share", Config{ProjectShares: map[string]float64{"p": 0}}, true},
		{"valid share", Config{ProjectShares: map[string]float64{"p": 2.5}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.cfg.Validate()
			if (err != nil) != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("Validate() = %v, want it to wrap ErrInvalidConfig", err)
			}
		})
	}
}

func TestSketchEstimate(t *testing.T) {
	for _, n := range []int{0, 1, 15, 100, 10_000} {
		var s sketch
		for i := range n {
			s.add(hashPath("/nix/store/" + strconv.Itoa(i)))
		}
		// Adding the same members again changes nothing.
		for i := range n {
			if s.add(hashPath("/nix/store/" + strconv.Itoa(i))) {
				t.Fatalf("sketch of %d: adding member %d again changed it", n, i)
			}
		}
		got := s.estimate()
		if n < sketchSize && got != float64(n) {
			t.Errorf("estimate of %d members = %v, want exactly %d", n, got, n)
		}
		if n >= sketchSize && (got < 0.4*float64(n) || got > 2.5*float64(n)) {
			t.Errorf("estimate of %d members = %v, want within a factor of 2.5", n, got)
		}
	}
}

// TestRandomEvents drives the scheduler with random graphs and random
// worker behaviour and checks invariants after every event. No slot is
// overbooked and no derivation is assigned twice at once. A derivation is
// assigned only when its inputs are built or are earlier links of the same
// job. Every evaluation ends with EvaluationDone.
func TestRandomEvents(t *testing.T) {
	for seed := uint64(1); seed <= 30; seed++ {
		for _, policy := range Policies {
			t.Run(fmt.Sprintf("%s/seed%d", policy, seed), func(t *testing.T) {
				runRandomEvents(t, policy, seed)
			})
		}
	}
}

func runRandomEvents(t *testing.T, policy Policy, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 1))
	s, err := New(Config{Policy: policy, MaxAttempts: 2, MaxJobLength: 1 + rng.IntN(5)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

	// Every evaluation draws from one pool of derivations, so they share.
	const pool = 60
	inputsOf := make([][]int, pool)
	for i := range pool {
		for k := rng.IntN(3); k > 0 && i > 0; k-- {
			inputsOf[i] = append(inputsOf[i], rng.IntN(i))
		}
	}
	path := func(i int) string { return "/nix/store/d" + strconv.Itoa(i) + ".drv" }
	index := make(map[string]int)
	for i := range pool {
		index[path(i)] = i
	}

	built := make(map[string]bool)
	running := make(map[string]Assign) // by job ID
	builtLinks := make(map[string]int) // by job ID
	stopped := make(map[string]bool)   // by job ID
	pendingEvals := make(map[string]bool)
	workerSlots := map[string]int{}

	check := func(decisions []Decision) {
		t.Helper()
		for _, d := range decisions {
			switch d := d.(type) {
			case Assign:
				if _, ok := running[d.JobID]; ok {
					t.Fatalf("job %s assigned twice", d.JobID)
				}
				for i, p := range d.DrvPaths {
					for _, in := range inputsOf[index[p]] {
						inPath := path(in)
						if built[inPath] {
							continue
						}
						if i > 0 && d.DrvPaths[i-1] == inPath {
							continue
						}
						t.Fatalf("%s assigned in %s before its input %s is built", p, d.JobID, inPath)
					}
					for _, other := range running {
						// A job whose link failed builds nothing more,
						// because each link depends on the one before.
						if stopped[other.JobID] {
							continue
						}
						for _, q := range other.DrvPaths {
							if q == p && !built[p] {
								t.Fatalf("%s assigned in %s while job %s builds it", p, d.JobID, other.JobID)
							}
						}
					}
				}
				running[d.JobID] = d
			case EvaluationDone:
				if !pendingEvals[d.EvalID] {
					t.Fatalf("EvaluationDone for %s, which is not pending", d.EvalID)
				}
				delete(pendingEvals, d.EvalID)
			}
		}

		// A job whose links are all built has freed its slot, though
		// JobFinished has not come yet.
		perWorker := map[string]int{}
		for _, a := range running {
			if builtLinks[a.JobID] < len(a.DrvPaths) {
				perWorker[a.WorkerID]++
			}
		}
		for w, n := range perWorker {
			if n > workerSlots[w] {
				t.Fatalf("worker %s runs %d jobs, more than its %d slots", w, n, workerSlots[w])
			}
		}
	}
	must := func(decisions []Decision, err error) []Decision {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return decisions
	}

	for w := range 3 {
		id := "w" + strconv.Itoa(w)
		workerSlots[id] = 1 + rng.IntN(3)
		check(must(s.AddWorker(Worker{ID: id, Systems: []string{"x86_64-linux"}, Slots: workerSlots[id]}, now)))
	}

	evalCount := 0
	for step := 0; step < 3000 && (evalCount < 6 || len(pendingEvals) > 0); step++ {
		now = now.Add(time.Duration(1+rng.IntN(60)) * time.Second)
		switch r := rng.IntN(10); {
		case r == 0 && evalCount < 6:
			evalCount++
			id := "e" + strconv.Itoa(evalCount)
			g := Graph{EvalID: id, Project: "p" + strconv.Itoa(rng.IntN(2))}
			// A random set of roots and their closure.
			include := make([]bool, pool)
			for k := 0; k < 1+rng.IntN(8); k++ {
				var mark func(int)
				mark = func(i int) {
					if include[i] {
						return
					}
					include[i] = true
					for _, in := range inputsOf[i] {
						mark(in)
					}
				}
				mark(rng.IntN(pool))
			}
			for i := range pool {
				if !include[i] {
					continue
				}
				d := Derivation{DrvPath: path(i), System: "x86_64-linux", OutputSize: uint64(rng.IntN(1e6))}
				for _, in := range inputsOf[i] {
					d.InputDrvs = append(d.InputDrvs, path(in))
				}
				g.Derivations = append(g.Derivations, d)
			}
			pendingEvals[id] = true
			check(must(s.AddGraph(g, now)))
		case len(running) > 0:
			// Advance a random running job by one step.
			ids := make([]string, 0, len(running))
			for id := range running {
				ids = append(ids, id)
			}
			slices.Sort(ids)
			a := running[ids[rng.IntN(len(ids))]]
			next := ""
			for _, p := range a.DrvPaths {
				if st, ok := s.Status(p); ok && st.State == StateAssigned && st.JobID == a.JobID {
					next = p
					break
				}
			}
			switch {
			case next == "" || rng.IntN(12) == 0:
				delete(running, a.JobID)
				check(must(s.JobFinished(a.JobID, now)))
			case rng.IntN(15) == 0:
				stopped[a.JobID] = true
				check(must(s.DerivationFailed(a.JobID, next, "exit code 1", now)))
			default:
				built[next] = true
				builtLinks[a.JobID]++
				check(must(s.DerivationBuilt(a.JobID, next, now)))
			}
		default:
			check(s.Tick(now))
		}
	}

	if len(pendingEvals) > 0 {
		t.Fatalf("evaluations never done: %v", pendingEvals)
	}
}
