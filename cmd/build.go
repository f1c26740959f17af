package cmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/web/client"
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

// buildArgUsage is the argument of the build commands in their help.
const buildArgUsage = "BUILD-ID|DRV-PATH"

// resolveBuild returns the build that arg names: a build ID, or the .drv
// store path of a derivation, which names its newest build.
func resolveBuild(ctx context.Context, cl *client.Client, arg string) (db.Build, error) {
	if strings.HasSuffix(arg, ".drv") || strings.Contains(arg, "/") {
		if !strings.HasPrefix(arg, "/") || !strings.HasSuffix(arg, ".drv") {
			return db.Build{}, fmt.Errorf("derivation %q is invalid: give the absolute store path of a .drv file, such as 'gradient build show' prints", arg)
		}
		bs, err := cl.DerivationBuilds(ctx, arg, 1)
		if err != nil {
			return db.Build{}, err
		}
		if len(bs) == 0 {
			return db.Build{}, fmt.Errorf("no build of derivation %s on this node: check the path, or evaluate a project that contains it", arg)
		}
		return bs[0], nil
	}

	id, err := strconv.ParseUint(arg, 10, 64)
	if err != nil || id == 0 {
		return db.Build{}, fmt.Errorf("build %q is invalid: give the number that 'gradient project show' prints, or a .drv store path", arg)
	}
	return cl.Build(ctx, id)
}

func newBuildShowCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show " + buildArgUsage,
		Short: "Print one build; a .drv path prints its newest build",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			b, err := resolveBuild(cmd.Context(), cl, args[0])
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
			if b.Waiting != "" {
				fmt.Fprintf(w, "waiting: %s\n", waitingLine(b))
			}
			fmt.Fprintf(w, "outputs: %s\n", outputList(b.Outputs))
			if b.Error != "" {
				fmt.Fprintf(w, "error: %s\n", b.Error)
			}
			if b.FailedDependency != "" {
				fmt.Fprintf(w, "failed dependency: %s\n", failedInput(b))
				if dep, ok := fetchFailedInput(cmd.Context(), cl, b); ok && dep.Error != "" {
					fmt.Fprintf(w, "dependency error: %s\n", dep.Error)
				}
			}
			if len(b.InputDrvs) > 0 {
				fmt.Fprintf(w, "inputs: %s\n", strings.Join(b.InputDrvs, " "))
			}
			return nil
		},
	}
}

// waitingLine returns a build's wait with its type, such as
// "no-worker: waiting for a worker with system aarch64-linux".
func waitingLine(b db.Build) string {
	if b.WaitingReason == "" {
		return b.Waiting
	}
	return b.WaitingReason + ": " + b.Waiting
}

// waitingClause returns a build's wait to end a sentence about it, such
// as " (no-worker): waiting for a worker with system aarch64-linux".
func waitingClause(b db.Build) string {
	if b.WaitingReason == "" {
		return ": " + b.Waiting
	}
	return " (" + b.WaitingReason + "): " + b.Waiting
}

// failedInput names the failed input of a dependency_failed build, with
// its build ID when the API returned it.
func failedInput(b db.Build) string {
	if b.FailedDependencyBuildID == 0 {
		return b.FailedDependency
	}
	return fmt.Sprintf("%s (build %d)", b.FailedDependency, b.FailedDependencyBuildID)
}

// fetchFailedInput returns the build of b's failed input, and false when
// there is none or it cannot be read. The caller prints what it has
// without it.
func fetchFailedInput(ctx context.Context, cl *client.Client, b db.Build) (db.Build, bool) {
	if b.FailedDependencyBuildID == 0 {
		return db.Build{}, false
	}
	dep, err := cl.Build(ctx, b.FailedDependencyBuildID)
	return dep, err == nil
}

func newBuildWhyCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "why " + buildArgUsage,
		Short: "Print why the scheduler placed the build on its worker (candidates, runner-up and score), or why it never ran",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			b, err := resolveBuild(cmd.Context(), cl, args[0])
			if err != nil {
				return err
			}
			if err := errNotRun(cmd.Context(), cl, b); err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), b.Placement)
			}
			printPlacement(cmd.OutOrStdout(), b)
			return nil
		},
	}
}

// errNotRun returns the error for a build whose placement does not
// explain it, because no job of its own ran it. Such a build is queued or
// cached, or its input failed, or the node failed it before a worker
// finished it, or it took the result of another evaluation's build. It
// returns nil for a build whose placement explains it.
func errNotRun(ctx context.Context, cl *client.Client, b db.Build) error {
	switch {
	case b.Status == db.BuildDependencyFailed:
		msg := fmt.Sprintf("build %d (%s) never ran: its input %s failed", b.ID, b.Name, failedInput(b))
		if dep, ok := fetchFailedInput(ctx, cl, b); ok && dep.Error != "" {
			msg += ": " + firstLine(dep.Error)
		}
		if b.FailedDependencyBuildID != 0 {
			msg += fmt.Sprintf("; 'gradient build why %d' shows that build", b.FailedDependencyBuildID)
		}
		return errors.New(msg)
	case b.Status == db.BuildCached:
		return fmt.Errorf("build %d (%s) never ran: its outputs were in the cache already", b.ID, b.Name)
	case b.Placement == nil:
		return errNeverPlaced(ctx, cl, b)
	case b.Status == db.BuildQueued:
		// The node's wait of a build that had a job names that job.
		if b.Waiting != "" {
			return fmt.Errorf("build %d (%s) is queued%s", b.ID, b.Name, waitingClause(b))
		}
		return fmt.Errorf("build %d (%s) is queued: its last job, %s on worker %s, ended without building it", b.ID, b.Name, b.Placement.JobID, b.Placement.WorkerID)
	case b.Status == db.BuildFailed && b.StartedAt == nil:
		return fmt.Errorf("build %d (%s) failed without a worker running it to the end: %s; its last job, %s on worker %s, ended without building it",
			b.ID, b.Name, firstLine(b.Error), b.Placement.JobID, b.Placement.WorkerID)
	}
	return nil
}

// errNeverPlaced returns the error for a build that never had a job. A
// queued build has the reason it waits. A finished one took its result
// from the build of the same derivation in an earlier evaluation, which
// the message names when it finds it.
func errNeverPlaced(ctx context.Context, cl *client.Client, b db.Build) error {
	if b.Status != db.BuildQueued {
		msg := fmt.Sprintf("build %d (%s) was never placed on a worker: it is %s", b.ID, b.Name, b.Status)
		if ran, ok := buildThatRan(ctx, cl, b); ok {
			msg += fmt.Sprintf(", as build %d of evaluation %d found; 'gradient build why %d' shows that build", ran.ID, ran.EvalID, ran.ID)
		}
		return errors.New(msg)
	}
	if b.Waiting != "" {
		return fmt.Errorf("build %d (%s) is queued and was never placed on a worker%s", b.ID, b.Name, waitingClause(b))
	}
	needs := "system " + b.System
	if len(b.Features) > 0 {
		needs += " and features " + strings.Join(b.Features, ",")
	}
	return fmt.Errorf("build %d (%s) is queued and was never placed on a worker: it waits for its inputs, "+
		"or for a connected worker with a free slot, %s; 'gradient worker list' shows each worker's systems and features",
		b.ID, b.Name, needs)
}

// buildThatRan returns the newest build of b's derivation other than b
// that a job ran, and false when there is none or the lookup failed.
func buildThatRan(ctx context.Context, cl *client.Client, b db.Build) (db.Build, bool) {
	if cl == nil {
		return db.Build{}, false
	}
	bs, err := cl.DerivationBuilds(ctx, b.DrvPath, 100)
	if err != nil {
		return db.Build{}, false
	}
	for _, other := range bs {
		if other.ID != b.ID && other.Placement != nil && other.Status == b.Status {
			return other, true
		}
	}
	return db.Build{}, false
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
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
	if p.Exclusive {
		fmt.Fprintln(w, "worker to itself: yes, an urgent parallel build; no other job started there while it ran")
	}
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
		Use:   "log " + buildArgUsage,
		Short: "Print a build's log; a .drv path prints the log of its newest build",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			b, err := resolveBuild(cmd.Context(), cl, args[0])
			if err != nil {
				return err
			}
			id := b.ID
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
			b, err = cl.Build(cmd.Context(), id)
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
				msg += ": dependency " + failedInput(b) + " failed"
			}
			fmt.Fprintln(cmd.ErrOrStderr(), msg)
			return exitError{code: 1}
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the build finishes; exit 1 unless it succeeded")
	return c
}
