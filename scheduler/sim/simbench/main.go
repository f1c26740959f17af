// Command simbench runs the scheduler simulations that docs/scheduler.md
// records and checks them against the scheduler's goals. On the
// nixpkgs-shaped graph with 8 and 32 workers, the gradient policy should
// finish within 1.15 times the lower bound and move at least 40% fewer
// bytes than the hydra policy. The same graphs are run again with every
// build on one core, for comparison and without goals. A 100,000-derivation graph should be
// planned in under 2 s, with each decision under 1 ms. It prints a
// Markdown report and exits with status 1 when a goal is missed.
// `make bench-scheduler` runs it.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strings"

	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/scheduler/sim"
)

func main() {
	seeds := flag.Int("seeds", 3, "number of graph seeds, 1 to N, for the 20,000-derivation runs")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()

	ok, err := run(ctx, os.Stdout, *seeds)
	if err != nil {
		fmt.Fprintln(os.Stderr, "simbench:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

// goal is one checked claim and its outcome.
type goal struct {
	text string
	met  bool
}

func run(ctx context.Context, out io.Writer, seeds int) (bool, error) {
	fmt.Fprintf(out, "Machine: %s, %d CPUs, GOMAXPROCS %d, %s %s/%s\n\n",
		cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH)

	var goals []goal

	fmt.Fprintln(out, "nixpkgs-shaped graph, 20,000 derivations, 4 cores per worker, 100 MB/s per worker:")
	fmt.Fprintln(out)
	stats, err := runPolicies(ctx, out, seeds, false)
	if err != nil {
		return false, err
	}
	for _, st := range stats {
		goals = append(goals,
			goal{fmt.Sprintf("%d workers: gradient makespan within 1.15x of the lower bound (worst %.3f). "+
				"Against the release bound, which no schedule can beat and which is up to %.3fx the lower bound here, the worst is %.3f",
				st.workers, st.worstRatio, st.boundGap, st.worstRelease), st.worstRatio <= 1.15},
			goal{fmt.Sprintf("%d workers: gradient moves at least 40%% fewer bytes than hydra (worst %.0f%% fewer)", st.workers, 100*(1-st.worstBytes)), st.worstBytes <= 0.6},
		)
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "The same graphs with every build on one core (gradient sim --serial-builds), no goal:")
	fmt.Fprintln(out)
	serialStats, err := runPolicies(ctx, out, seeds, true)
	if err != nil {
		return false, err
	}
	fmt.Fprintln(out)
	for _, st := range serialStats {
		fmt.Fprintf(out, "- %d workers, serial builds: gradient worst %.3f of the lower bound, %.3f of the release bound, which is up to %.3fx the lower bound\n",
			st.workers, st.worstRatio, st.worstRelease, st.boundGap)
	}

	fmt.Fprintln(out)
	fmt.Fprintf(out, "More graphs and farm sizes, gradient policy, seeds %d to %d, no goal:\n", seeds+1, seeds+6)
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| workers | worst ratio | worst ratio to release bound | release bound over lower bound |")
	fmt.Fprintln(out, "| ---: | ---: | ---: | ---: |")
	for _, workers := range []int{16, 32, 64} {
		worstRatio, worstRelease, boundGap := 0.0, 0.0, 0.0
		for seed := seeds + 1; seed <= seeds+6; seed++ {
			r, err := sim.Run(ctx, sim.Options{Graph: "nixpkgs", Workers: workers, Seed: uint64(seed)})
			if err != nil {
				return false, err
			}
			worstRatio = max(worstRatio, r.MakespanS/r.LowerBoundS)
			worstRelease = max(worstRelease, r.MakespanS/r.ReleaseBoundS)
			boundGap = max(boundGap, r.ReleaseBoundS/r.LowerBoundS)
		}
		fmt.Fprintf(out, "| %d | %.3f | %.3f | up to %.3f |\n", workers, worstRatio, worstRelease, boundGap)
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "nixpkgs-shaped graph, 100,000 derivations, 32 workers, seed 1:")
	fmt.Fprintln(out)
	fmt.Fprintln(out, "| policy | plan s (wall) | plan s (CPU) | max decision us | max call us | scheduler s | makespan s | ratio | ratio to release bound | bytes moved GB |")
	fmt.Fprintln(out, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, policy := range []scheduler.Policy{scheduler.PolicyHydra, scheduler.PolicyGradient} {
		r, err := sim.Run(ctx, sim.Options{Graph: "nixpkgs", Size: 100_000, Workers: 32, Policy: policy, Seed: 1})
		if err != nil {
			return false, err
		}
		fmt.Fprintf(out, "| %s | %.3f | %.3f | %.0f | %.0f | %.2f | %.0f | %.3f | %.3f | %.1f |\n",
			policy, r.PlanS, r.PlanCPUS, r.MaxDecisionUS, r.MaxCallUS, r.SchedulerS, r.MakespanS, r.MakespanS/r.LowerBoundS, r.MakespanS/r.ReleaseBoundS, float64(r.BytesMoved)/1e9)
		if policy == scheduler.PolicyGradient {
			goals = append(goals,
				goal{fmt.Sprintf("100,000 derivations planned in under 2 s (%.3f s)", r.PlanS), r.PlanS < 2},
				goal{fmt.Sprintf("each decision under 1 ms (max %.0f us per decision)", r.MaxDecisionUS), r.MaxDecisionUS < 1000},
			)
		}
	}

	fmt.Fprintln(out)
	fmt.Fprintln(out, "Goals:")
	fmt.Fprintln(out)
	allMet := true
	for _, g := range goals {
		mark := "met"
		if !g.met {
			mark = "MISSED"
			allMet = false
		}
		fmt.Fprintf(out, "- %s: %s\n", mark, g.text)
	}
	return allMet, nil
}

// policyStats sums up the gradient policy's runs on one number of workers.
type policyStats struct {
	workers      int
	worstRatio   float64
	worstBytes   float64
	worstRelease float64
	boundGap     float64
}

// runPolicies runs the three policies on the 20,000-derivation graphs of
// seeds 1 to seeds with 8 and 32 workers and prints a table row per run.
func runPolicies(ctx context.Context, out io.Writer, seeds int, serial bool) ([]policyStats, error) {
	policies := []scheduler.Policy{scheduler.PolicyFIFO, scheduler.PolicyHydra, scheduler.PolicyGradient}
	fmt.Fprintln(out, "| workers | seed | policy | makespan s | lower bound s | ratio | release bound s | ratio to it | bytes moved GB | vs hydra | jobs | max decision us | max call us |")
	fmt.Fprintln(out, "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	var stats []policyStats
	for _, workers := range []int{8, 32} {
		st := policyStats{workers: workers}
		for seed := 1; seed <= seeds; seed++ {
			results := make(map[scheduler.Policy]sim.Result)
			for _, policy := range policies {
				r, err := sim.Run(ctx, sim.Options{Graph: "nixpkgs", Workers: workers, Policy: policy, Seed: uint64(seed), SerialBuilds: serial})
				if err != nil {
					return nil, err
				}
				results[policy] = r
			}
			hydraBytes := float64(results[scheduler.PolicyHydra].BytesMoved)
			for _, policy := range policies {
				r := results[policy]
				ratio := r.MakespanS / r.LowerBoundS
				bytesRatio := float64(r.BytesMoved) / hydraBytes
				fmt.Fprintf(out, "| %d | %d | %s | %.0f | %.0f | %.3f | %.0f | %.3f | %.1f | %.2f | %d | %.0f | %.0f |\n",
					workers, seed, policy, r.MakespanS, r.LowerBoundS, ratio, r.ReleaseBoundS, r.MakespanS/r.ReleaseBoundS, float64(r.BytesMoved)/1e9, bytesRatio, r.Jobs, r.MaxDecisionUS, r.MaxCallUS)
				if policy == scheduler.PolicyGradient {
					st.worstRatio = max(st.worstRatio, ratio)
					st.worstBytes = max(st.worstBytes, bytesRatio)
					st.worstRelease = max(st.worstRelease, r.MakespanS/r.ReleaseBoundS)
					st.boundGap = max(st.boundGap, r.ReleaseBoundS/r.LowerBoundS)
				}
			}
		}
		stats = append(stats, st)
	}
	return stats, nil
}

// cpuModel returns the CPU model name from /proc/cpuinfo, or "unknown CPU".
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()

	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, value, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "unknown CPU"
}
