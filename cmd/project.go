package cmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/web"
	"github.com/gradient-ci/gradient/web/client"
)

func newProjectCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "project", Short: "Create, evaluate and inspect projects"}
	c.PersistentFlags().BoolVar(&cf.json, "json", false, "print the API's JSON object")
	c.AddCommand(newProjectCreateCommand(cf), newProjectEvaluateCommand(cf), newProjectShowCommand(cf), newProjectListCommand(cf),
		newProjectGraphCommand(cf))
	return c
}

func newProjectCreateCommand(cf *clientFlags) *cobra.Command {
	var flake, entryPoints string
	c := &cobra.Command{
		Use:   "create ORG/PROJECT --flake REF",
		Short: "Create a project that builds a flake; the organisation is created if needed",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			org, name, err := splitProject(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			req := web.CreateProjectRequest{Org: org, Name: name, Flake: flake}
			if entryPoints != "" {
				for _, p := range strings.Split(entryPoints, ",") {
					req.EntryPoints = append(req.EntryPoints, strings.TrimSpace(p))
				}
			}
			p, err := cl.CreateProject(cmd.Context(), req)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), p)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "created project %s/%s for %s (entry points %s)\n", p.Org, p.Name, p.FlakeRef, strings.Join(p.EntryPoints, ","))
			return nil
		},
	}
	c.Flags().StringVar(&flake, "flake", "", "flake reference, such as /src/repo, git+https://host/repo or github:owner/repo")
	c.Flags().StringVar(&entryPoints, "entry-points", "", "comma-separated attribute patterns; '*' matches one name, '**' any depth (default packages.*.*,checks.*.*)")
	_ = c.MarkFlagRequired("flake")
	return c
}

func newProjectEvaluateCommand(cf *clientFlags) *cobra.Command {
	var wait bool
	c := &cobra.Command{
		Use:   "evaluate ORG/PROJECT",
		Short: "Start an evaluation of the project's flake and build what is missing",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			org, name, err := splitProject(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			e, err := cl.Evaluate(cmd.Context(), org, name)
			if err != nil {
				return err
			}
			if !wait {
				if cf.json {
					return printJSON(cmd.OutOrStdout(), e)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "evaluation %d queued\n", e.ID)
				return nil
			}
			return waitForEvaluation(cmd, cf, cl, e.ID)
		},
	}
	c.Flags().BoolVar(&wait, "wait", false, "show progress until the evaluation finishes; exit 1 when anything failed")
	return c
}

// waitForEvaluation polls the evaluation, printing a progress line to
// stderr whenever the counts change, then prints the result. When the
// command is interrupted it returns an error saying that the evaluation
// goes on, because the node keeps running it.
func waitForEvaluation(cmd *cobra.Command, cf *clientFlags, cl *client.Client, id uint64) error {
	err := pollEvaluation(cmd, cf, cl, id)
	if err != nil && cmd.Context().Err() != nil {
		return fmt.Errorf("stopped waiting for evaluation %d, which goes on running on the node", id)
	}
	return err
}

func pollEvaluation(cmd *cobra.Command, cf *clientFlags, cl *client.Client, id uint64) error {
	ctx := cmd.Context()
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()

	last := ""
	var unreachableSince time.Time
	for {
		e, bs, err := fetchEvaluation(ctx, cl, id)
		var ue *client.UnreachableError
		if errors.As(err, &ue) {
			// The node may be restarting: it resumes the evaluation, so
			// keep polling for a while before giving up.
			if unreachableSince.IsZero() {
				unreachableSince = time.Now()
				fmt.Fprintf(cmd.ErrOrStderr(), "evaluation %d: node unreachable, retrying for up to %s\n", id, unreachableTimeout)
			}
			if time.Since(unreachableSince) > unreachableTimeout {
				return err
			}
		} else if err != nil {
			return err
		} else {
			unreachableSince = time.Time{}
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-ticker.C:
			}
			continue
		}
		line := fmt.Sprintf("evaluation %d: %s%s", id, e.Status, buildCounts(bs))
		if e.Waiting != "" {
			line += ", " + e.Waiting
		}
		line += noWorkerWaits(bs)
		if line != last {
			fmt.Fprintln(cmd.ErrOrStderr(), line)
			last = line
		}
		if e.Status.Finished() {
			if cf.json {
				if err := printJSON(cmd.OutOrStdout(), e); err != nil {
					return err
				}
			} else {
				printEvaluation(cmd.OutOrStdout(), e, bs)
			}
			if e.Status != db.EvalSucceeded {
				return exitError{code: 1}
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ticker.C:
		}
	}
}

// unreachableTimeout is how long --wait keeps polling a node that does not
// respond, such as one that restarts.
const unreachableTimeout = 2 * time.Minute

// fetchEvaluation returns the evaluation and, once it has a graph, its
// builds.
func fetchEvaluation(ctx context.Context, cl *client.Client, id uint64) (db.Evaluation, []db.Build, error) {
	e, err := cl.Evaluation(ctx, id)
	if err != nil {
		return e, nil, err
	}
	if e.Status == db.EvalQueued || e.Status == db.EvalEvaluating {
		return e, nil, nil
	}
	bs, err := cl.Builds(ctx, id)
	return e, bs, err
}

func buildCounts(bs []db.Build) string {
	if len(bs) == 0 {
		return ""
	}
	counts := map[db.BuildStatus]int{}
	for _, b := range bs {
		counts[b.Status]++
	}
	var parts []string
	for _, s := range []db.BuildStatus{db.BuildQueued, db.BuildBuilding, db.BuildSucceeded, db.BuildCached, db.BuildFailed, db.BuildDependencyFailed, db.BuildAborted} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	return fmt.Sprintf(", %d builds (%s)", len(bs), strings.Join(parts, ", "))
}

func newProjectShowCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show ORG/PROJECT",
		Short: "Print the project's latest evaluation: entry points, builds and outputs",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			org, name, err := splitProject(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			p, err := cl.Project(cmd.Context(), org, name)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if p.LastEvaluation == 0 {
				if cf.json {
					return printJSON(out, projectShowJSON{Project: p, Builds: []db.Build{}})
				}
				fmt.Fprintf(out, "project %s/%s (%s) has no evaluation yet: run 'gradient project evaluate %s/%s'\n", org, name, p.FlakeRef, org, name)
				return nil
			}
			e, err := cl.Evaluation(cmd.Context(), p.LastEvaluation)
			if err != nil {
				return err
			}
			bs, err := cl.Builds(cmd.Context(), e.ID)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(out, projectShowJSON{Project: p, Evaluation: &e, Builds: bs})
			}
			printEvaluation(out, e, bs)
			return nil
		},
	}
}

// projectShowJSON is the output of `project show --json`: the API's
// project, its latest evaluation and that evaluation's builds.
type projectShowJSON struct {
	Project db.Project `json:"project"`
	// Evaluation is null before the project's first evaluation.
	Evaluation *db.Evaluation `json:"evaluation"`
	Builds     []db.Build     `json:"builds"`
}

func printEvaluation(w io.Writer, e db.Evaluation, bs []db.Build) {
	fmt.Fprintf(w, "evaluation %d of %s/%s: %s\n", e.ID, e.Org, e.Project, e.Status)
	fmt.Fprintf(w, "flake: %s\n", e.FlakeRef)
	if e.Flake.LockedURL != "" {
		fmt.Fprintf(w, "locked: %s\n", e.Flake.LockedURL)
	}
	if e.Error != "" {
		fmt.Fprintf(w, "error: %s\n", e.Error)
	}
	if e.Waiting != "" {
		fmt.Fprintf(w, "%s\n", e.Waiting)
	}

	byID := map[uint64]db.Build{}
	for _, b := range bs {
		byID[b.ID] = b
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ATTRIBUTE\tBUILD\tSTATUS\tOUTPUTS")
	for _, ep := range e.Results {
		if ep.EvalError != "" {
			fmt.Fprintf(tw, "%s\t-\teval error\t-\n", ep.Attr)
			continue
		}
		b, ok := byID[ep.BuildID]
		if !ok {
			fmt.Fprintf(tw, "%s\t-\tpending\t-\n", ep.Attr)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", ep.Attr, b.ID, b.Status, outputList(b.Outputs))
	}
	tw.Flush()

	for _, ep := range e.Results {
		if ep.EvalError != "" {
			fmt.Fprintf(w, "\n%s failed to evaluate:\n%s\n", ep.Attr, indent(ep.EvalError))
			continue
		}
		b := byID[ep.BuildID]
		switch b.Status {
		case db.BuildFailed:
			fmt.Fprintf(w, "\n%s: build %d failed: %s\n", ep.Attr, b.ID, b.Error)
			// A build that failed before any worker started it, such as
			// one no worker could run, has no log to point at.
			if b.StartedAt != nil {
				fmt.Fprintf(w, "  see: gradient build log %d\n", b.ID)
			}
		case db.BuildDependencyFailed:
			printDependencyFailed(w, ep.Attr, b, byID)
		case db.BuildQueued:
			if b.Waiting != "" {
				fmt.Fprintf(w, "\n%s: build %d %s\n", ep.Attr, b.ID, b.Waiting)
			}
		}
	}
}

// printDependencyFailed prints why the build b of entry point attr did
// not run: its failed input, with that input's build, error and log
// when byID, the builds of the evaluation, contains it.
func printDependencyFailed(w io.Writer, attr string, b db.Build, byID map[uint64]db.Build) {
	dep, ok := byID[b.FailedDependencyBuildID]
	if !ok || dep.Error == "" {
		fmt.Fprintf(w, "\n%s: build %d not run because dependency %s failed\n", attr, b.ID, failedInput(b))
		return
	}
	fmt.Fprintf(w, "\n%s: build %d not run because dependency %s failed: %s\n", attr, b.ID, failedInput(b), firstLine(dep.Error))
	if dep.StartedAt != nil {
		fmt.Fprintf(w, "  see: gradient build log %d\n", dep.ID)
	}
}

func outputList(outputs map[string]string) string {
	names := make([]string, 0, len(outputs))
	for n := range outputs {
		names = append(names, n)
	}
	sort.Strings(names)
	var parts []string
	for _, n := range names {
		parts = append(parts, outputs[n])
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func indent(s string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n  ")
}

func newProjectListCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list [ORG]",
		Short: "List projects",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			org := ""
			if len(args) == 1 {
				org = args[0]
			}
			ps, err := cl.Projects(cmd.Context(), org)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), ps)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PROJECT\tFLAKE\tENTRY POINTS\tLAST EVALUATION")
			for _, p := range ps {
				fmt.Fprintf(tw, "%s/%s\t%s\t%s\t%d\n", p.Org, p.Name, p.FlakeRef, strings.Join(p.EntryPoints, ","), p.LastEvaluation)
			}
			return tw.Flush()
		},
	}
}

func newProjectGraphCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "graph ORG/PROJECT",
		Short: "Print the derivation graph of the project's latest evaluation; --json writes the file 'gradient sim --graph' reads",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			org, name, err := splitProject(args[0])
			if err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			p, err := cl.Project(cmd.Context(), org, name)
			if err != nil {
				return err
			}
			if p.LastEvaluation == 0 {
				return fmt.Errorf("project %s/%s has no evaluation yet: run 'gradient project evaluate %s/%s'", org, name, org, name)
			}
			g, err := cl.Graph(cmd.Context(), p.LastEvaluation)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), g)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSYSTEM\tINPUTS\tOUTPUT BYTES\tBUILD S\tCACHED")
			for _, d := range g.Derivations {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%.1f\t%t\n", d.Name, d.System, len(d.InputDrvs), d.OutputSize, d.BuildTimeSeconds, d.Cached)
			}
			return tw.Flush()
		},
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// noWorkerWaits returns a line per distinct wait of the builds that no
// connected worker can build, each with the number of builds, for the
// progress of --wait. Those builds fail at a deadline unless a worker
// connects, which a count of queued builds does not show.
func noWorkerWaits(bs []db.Build) string {
	counts := map[string]int{}
	var order []string
	for _, b := range bs {
		if b.Status.Finished() || b.WaitingReason != string(scheduler.NoWorker) || b.Waiting == "" {
			continue
		}
		if counts[b.Waiting] == 0 {
			order = append(order, b.Waiting)
		}
		counts[b.Waiting]++
	}
	var sb strings.Builder
	for _, wait := range order {
		fmt.Fprintf(&sb, "\n  %s: %s", plural(counts[wait], "build"), wait)
	}
	return sb.String()
}
