package cmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/internal/db"
)

func newBuildCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "build", Short: "Inspect builds"}
	show := newBuildShowCommand(cf)
	show.Flags().BoolVar(&cf.json, "json", false, "print the API's JSON object")
	why := newBuildWhyCommand(cf)
	why.Flags().BoolVar(&cf.json, "json", false, "print the build's placement as JSON")
	c.AddCommand(show, newBuildLogCommand(cf), why)
	return c
}

func parseBuildID(arg string) (uint64, error) {
	id, err := strconv.ParseUint(arg, 10, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("build id %q is invalid: give the number that 'gradient project show' prints", arg)
	}
	return id, nil
}

func newBuildShowCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show BUILD-ID",
		Short: "Print one build",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseBuildID(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			b, err := cl.Build(cmd.Context(), id)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), b)
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "build %d (evaluation %d): %s\n", b.ID, b.EvalID, b.Status)
			fmt.Fprintf(w, "derivation: %s\n", b.DrvPath)
			fmt.Fprintf(w, "system: %s\n", b.System)
			if len(b.Features) > 0 {
				fmt.Fprintf(w, "required features: %s\n", strings.Join(b.Features, ","))
			}
			if b.WorkerID != "" {
				fmt.Fprintf(w, "worker: %s\n", b.WorkerID)
			}
			fmt.Fprintf(w, "outputs: %s\n", outputList(b.Outputs))
			if b.Error != "" {
				fmt.Fprintf(w, "error: %s\n", b.Error)
			}
			if b.FailedDependency != "" {
				fmt.Fprintf(w, "failed dependency: %s\n", b.FailedDependency)
			}
			if len(b.InputDrvs) > 0 {
				fmt.Fprintf(w, "inputs: %s\n", strings.Join(b.InputDrvs, " "))
			}
			return nil
		},
	}
}

func newBuildWhyCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "why BUILD-ID",
		Short: "Print why the scheduler placed the build on its worker: candidates, runner-up and score",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseBuildID(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			b, err := cl.Build(cmd.Context(), id)
			if err != nil {
				return err
			}
			p := b.Placement
			if p == nil {
				return errNeverPlaced(b)
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			printPlacement(cmd.OutOrStdout(), b)
			return nil
		},
	}
}

// errNeverPlaced returns the error for a build that never had a job. A
// queued build waits for its inputs or for a connected worker with a free
// slot, its system and its required features, so the message names those.
func errNeverPlaced(b db.Build) error {
	if b.Status != db.BuildQueued {
		return fmt.Errorf("build %d (%s) was never placed on a worker: it is %s", b.ID, b.Name, b.Status)
	}
	needs := "system " + b.System
	if len(b.Features) > 0 {
		needs += " and features " + strings.Join(b.Features, ",")
	}
	return fmt.Errorf("build %d (%s) is queued and was never placed on a worker: it waits for its inputs, "+
		"or for a connected worker with a free slot, %s; 'gradient worker list' shows each worker's systems and features",
		b.ID, b.Name, needs)
}

// printPlacement prints a build's placement, which must be set.
func printPlacement(w io.Writer, b db.Build) {
	p := b.Placement
	fmt.Fprintf(w, "build %d (%s): %s\n", b.ID, b.Name, b.Status)
	fmt.Fprintf(w, "worker: %s\n", p.WorkerID)
	fmt.Fprintf(w, "job: %s, %d derivation(s), assigned %s\n", p.JobID, p.Links, p.AssignedAt.Format(time.RFC3339))
	fmt.Fprintf(w, "candidates: %d (workers with a free slot, the system and the features)\n", p.Candidates)
	if p.RunnerUp != "" {
		fmt.Fprintf(w, "runner-up: %s, total %.1f s\n", p.RunnerUp, p.RunnerUpTotal)
	} else {
		fmt.Fprintln(w, "runner-up: none")
	}
	fmt.Fprintf(w, "urgent: %t\n", p.Urgent)
	fmt.Fprintln(w, "score (lower is better):")
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "  fetch\t%d bytes\t%.1f s\n", p.FetchBytes, p.FetchSeconds)
	fmt.Fprintf(tw, "  build\t\t%.1f s\n", p.BuildSeconds)
	fmt.Fprintf(tw, "  speed\t%g\t\n", p.Speed)
	fmt.Fprintf(tw, "  total\t\t%.1f s\n", p.Total)
	tw.Flush()
}

func newBuildLogCommand(cf *clientFlags) *cobra.Command {
	var follow bool
	c := &cobra.Command{
		Use:   "log BUILD-ID",
		Short: "Print a build's log",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseBuildID(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			body, err := cl.BuildLog(cmd.Context(), id, follow)
			if err != nil {
				return err
			}
			defer body.Close()
			if _, err := io.Copy(cmd.OutOrStdout(), body); err != nil || !follow {
				return err
			}

			// The stream ended: say how the build ended, and exit 1
			// unless it succeeded, as a script waiting on it expects.
			b, err := cl.Build(cmd.Context(), id)
			if err != nil {
				return err
			}
			if b.Status.Succeeded() {
				return nil
			}
			msg := fmt.Sprintf("build %d is %s", b.ID, b.Status)
			if b.Error != "" {
				msg += ": " + b.Error
			}
			if b.FailedDependency != "" {
				msg += ": dependency " + b.FailedDependency + " failed"
			}
			fmt.Fprintln(cmd.ErrOrStderr(), msg)
			return exitError{code: 1}
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the build finishes; exit 1 unless it succeeded")
	return c
}
