package cmd

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/scheduler/sim"
)

func newSimCommand() *cobra.Command {
	var (
		opts     sim.Options
		policy   string
		speeds   string
		jsonFlag bool
	)
	c := &cobra.Command{
		Use:   "sim --graph KIND|FILE [--workers N]",
		Short: "Replay a derivation graph on simulated workers under a scheduling policy",
		Long: "Replay a derivation graph on simulated workers and print the makespan, its lower bound,\n" +
			"the bytes moved between workers and the scheduler's decision times.\n\n" +
			"Graph kinds: " + strings.Join(sim.Kinds, ", ") + ", or the path of a graph file.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkSimFlags(cmd, opts, policy); err != nil {
				return err
			}
			opts.Policy = scheduler.Policy(policy)
			parsed, err := parseSpeeds(cmd, speeds, opts.Workers)
			if err != nil {
				return err
			}
			opts.Speeds = parsed
			res, err := sim.Run(cmd.Context(), opts)
			if err != nil {
				return err
			}
			if jsonFlag {
				return printJSON(cmd.OutOrStdout(), res)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "graph:\t%s (%s, seed %d)\n", res.Graph, plural(res.Derivations, "derivation"), res.Seed)
			fmt.Fprintf(tw, "workers:\t%d (%d slots), policy %s\n", res.Workers, res.Slots, res.Policy)
			if res.SerialBuilds {
				fmt.Fprintf(tw, "builds:\tserial, one core each\n")
			}
			fmt.Fprintf(tw, "makespan:\t%.0f s\n", res.MakespanS)
			fmt.Fprintf(tw, "lower bound:\t%.0f s (ratio %.3f)\n", res.LowerBoundS, res.MakespanS/res.LowerBoundS)
			fmt.Fprintf(tw, "release bound:\t%.0f s (ratio %.3f)\n", res.ReleaseBoundS, res.MakespanS/res.ReleaseBoundS)
			fmt.Fprintf(tw, "bytes moved:\t%d\n", res.BytesMoved)
			fmt.Fprintf(tw, "duplicate builds:\t%d\n", res.DuplicateBuilds)
			fmt.Fprintf(tw, "max decision time:\t%.1f µs\n", res.MaxDecisionUS)
			return tw.Flush()
		},
	}
	f := c.Flags()
	f.StringVar(&opts.Graph, "graph", "", "graph kind ("+strings.Join(sim.Kinds, ", ")+") or graph file written by 'gradient project graph --json'")
	f.IntVar(&opts.Size, "size", 0, "derivations in a generated graph (default: depends on the kind)")
	f.IntVar(&opts.Workers, "workers", 8, "number of simulated workers")
	f.IntVar(&opts.Cores, "cores", 4, "cores of each worker, which is also the number of jobs it runs at once")
	f.BoolVar(&opts.SerialBuilds, "serial-builds", false, "build every derivation on one core, as if none had enableParallelBuilding")
	f.StringVar(&speeds, "speeds", "", "comma-separated worker speeds, assigned in turn (default 1 for every worker)")
	f.Float64Var(&opts.Bandwidth, "bandwidth", 100e6, "bytes per second a worker fetches inputs at")
	f.StringVar(&policy, "policy", string(scheduler.PolicyGradient), "scheduling policy: gradient, hydra or fifo")
	f.Uint64Var(&opts.Seed, "seed", 1, "seed of the graph generator and the estimate noise")
	f.BoolVar(&jsonFlag, "json", false, "print one JSON object")
	_ = c.MarkFlagRequired("graph")
	return c
}

// checkSimFlags rejects flag values that the simulator would otherwise
// replace with a default or reject with the name of an Options field.
func checkSimFlags(cmd *cobra.Command, opts sim.Options, policy string) error {
	if !slices.Contains(scheduler.Policies, scheduler.Policy(policy)) {
		return fmt.Errorf("--policy %q is not a policy: give one of %v", policy, scheduler.Policies)
	}
	if opts.Workers < 1 {
		return fmt.Errorf("--workers %d is out of range: give at least 1", opts.Workers)
	}
	if opts.Cores < 1 {
		return fmt.Errorf("--cores %d is out of range: give at least 1", opts.Cores)
	}
	if !(opts.Bandwidth > 0) || math.IsInf(opts.Bandwidth, 0) {
		return fmt.Errorf("--bandwidth %v is out of range: give a positive number of bytes per second", opts.Bandwidth)
	}
	if cmd.Flags().Changed("size") {
		if !slices.Contains(sim.Kinds, opts.Graph) {
			return fmt.Errorf("--size applies to generated graphs only, not to the graph file %q", opts.Graph)
		}
		if opts.Size < 1 {
			return fmt.Errorf("--size %d is out of range: give at least 1", opts.Size)
		}
	}
	return nil
}

// parseSpeeds parses --speeds, a comma-separated list of at most workers
// positive numbers. Empty means the default speed for every worker.
func parseSpeeds(cmd *cobra.Command, list string, workers int) ([]float64, error) {
	if !cmd.Flags().Changed("speeds") {
		return nil, nil
	}
	var speeds []float64
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil || !(v >= scheduler.MinSpeed && v <= scheduler.MaxSpeed) {
			return nil, fmt.Errorf("--speeds: %q is out of range: give numbers from %v to %v", s, scheduler.MinSpeed, scheduler.MaxSpeed)
		}
		speeds = append(speeds, v)
	}
	if len(speeds) > workers {
		return nil, fmt.Errorf("--speeds gives %d speeds for %d workers: give at most one per worker", len(speeds), workers)
	}
	return speeds, nil
}

// plural returns n and noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
