package cmd

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/internal/worker"
	"github.com/gradient-ci/gradient/node"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/web"
)

func newWorkerCommand(cf *clientFlags) *cobra.Command {
	var (
		cfg      worker.RemoteConfig
		systems  string
		features string
		logLevel string
	)
	c := &cobra.Command{
		Use:   "worker",
		Short: "Run a worker that connects to a node (--server, --token), or manage worker tokens",
		Long: "With no subcommand, connect to the node at --server with the worker token given by --token,\n" +
			"and evaluate and build what the node sends until interrupted. The token comes from\n" +
			"'gradient worker register NAME', run against the node with its admin token.\n\n" +
			"Prefer GRADIENT_TOKEN to --token on a shared machine: on Linux other users can read a\n" +
			"process's command line in /proc, but not its environment.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var level slog.Level
			if err := level.UnmarshalText([]byte(logLevel)); err != nil {
				return fmt.Errorf("--log-level %q is invalid: give debug, info, warn or error", logLevel)
			}
			if cf.token == "" {
				return errors.New("no worker token: pass --token with the token that 'gradient worker register NAME' printed")
			}
			if err := checkServerURL(cf.server); err != nil {
				return err
			}
			if err := checkWorkerConfig(cfg); err != nil {
				return err
			}
			cfg.Server = cf.server
			cfg.Token = cf.token
			cfg.Systems = splitList(systems)
			cfg.Features = splitList(features)
			logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))

			err := worker.RunRemote(cmd.Context(), cfg, logger)
			var reject *protocol.RejectError
			if errors.As(err, &reject) {
				return exitError{code: 1}
			}
			if err == nil {
				logger.Info("worker stopped")
			}
			return err
		},
	}
	f := c.Flags()
	f.StringVar(&cfg.Worker.StoreDir, "store", "", "chroot store directory, passed to nix as --store (default: the machine's store)")
	f.IntVar(&cfg.Worker.MaxJobs, "max-jobs", 1, "jobs the worker runs at once, 1 to 1024")
	f.StringVar(&systems, "systems", "", "comma-separated systems the worker builds for (default: this machine's, such as x86_64-linux)")
	f.StringVar(&features, "features", "", "comma-separated system features, such as kvm,big-parallel, passed to nix as extra-system-features; a derivation goes only to a worker that lists all its requiredSystemFeatures; the worker also announces nix's own system-features")
	f.StringVar(&cfg.Worker.NixBinary, "nix", "nix", "nix binary")
	f.StringVar(&cfg.SpoolDir, "spool-dir", "", "directory for compressed NARs while they upload (default: the system's temporary directory)")
	f.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn or error")

	list := &cobra.Command{
		Use:   "list",
		Short: "List the workers: state, builds finished, running jobs out of slots, speed, systems and features",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			ws, err := cl.Workers(cmd.Context())
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), ws)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tBUILDS\tJOBS\tSPEED\tSYSTEMS\tFEATURES\tLAST SEEN")
			for _, w := range ws {
				lastSeen := "never"
				if w.LastSeen != nil {
					lastSeen = w.LastSeen.Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%g\t%s\t%s\t%s\n", w.Name, workerState(w), w.Builds, workerJobs(w),
					w.Speed, listOrDash(w.Systems), listOrDash(w.Features), lastSeen)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&cf.json, "json", false, "print the API's JSON objects")

	var speed float64
	register := &cobra.Command{
		Use:   "register NAME",
		Short: "Create a worker and print its token, alone, on stdout",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := node.CheckWorkerSpeed(speed); err != nil {
				return fmt.Errorf("--speed %w", err)
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			r, err := cl.RegisterWorker(cmd.Context(), args[0], speed)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), r.Token)
			return nil
		},
	}
	register.Flags().Float64Var(&speed, "speed", db.DefaultWorkerSpeed,
		"build speed relative to a machine of speed 1, like a speed factor in Hydra's machines file: at 2, a build estimated at 60s is expected to take 30s")

	c.AddCommand(
		register,
		list,
		&cobra.Command{
			Use:   "set-speed NAME SPEED",
			Short: "Change a worker's build speed, which applies the next time the worker connects",
			Long: "Change a worker's build speed relative to a machine of speed 1. A connected worker keeps its\n" +
				"old speed until it disconnects and connects again, and so does one that reconnects within its\n" +
				"lease after its connection dropped. The in-process worker's speed is set by\n" +
				"'gradient serve --worker-speed'.",
			Args: cobra.ExactArgs(2),
			RunE: func(cmd *cobra.Command, args []string) error {
				newSpeed, err := strconv.ParseFloat(args[1], 64)
				if err != nil {
					return fmt.Errorf("speed %q is not a number: give a positive number, such as 1 or 2.5", args[1])
				}
				if err := node.CheckWorkerSpeed(newSpeed); err != nil {
					return fmt.Errorf("speed %w", err)
				}
				cl, err := cf.client()
				if err != nil {
					return err
				}
				if err := cl.SetWorkerSpeed(cmd.Context(), args[0], newSpeed); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "worker %s speed set to %g; it applies the next time the worker connects\n", args[0], newSpeed)
				return nil
			},
		},
		&cobra.Command{
			Use:   "revoke NAME",
			Short: "Delete a worker's token and disconnect it",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				cl, err := cf.client()
				if err != nil {
					return err
				}
				if err := cl.RevokeWorker(cmd.Context(), args[0]); err != nil {
					return err
				}
				fmt.Fprintf(cmd.ErrOrStderr(), "worker %s revoked\n", args[0])
				return nil
			},
		},
	)
	return c
}

// checkServerURL returns an error unless server is an http or https URL
// with a host and no query or fragment, because the worker appends its
// connect path to it.
func checkServerURL(server string) error {
	u, err := url.Parse(server)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return fmt.Errorf("--server %q is invalid: give the node's http or https URL, such as http://127.0.0.1:3000", server)
	}
	return nil
}

// checkWorkerConfig returns an error for the flags of `gradient worker`
// that can never work. The worker checks them only after it connects, and
// then reconnects forever or fails the jobs the node gives it.
func checkWorkerConfig(cfg worker.RemoteConfig) error {
	if cfg.Worker.MaxJobs < 1 || cfg.Worker.MaxJobs > 1024 {
		return fmt.Errorf("--max-jobs %d is out of range: give 1 to 1024", cfg.Worker.MaxJobs)
	}
	if store := cfg.Worker.StoreDir; store != "" && !filepath.IsAbs(store) {
		return fmt.Errorf("--store %q is relative: give an absolute path, such as /var/lib/gradient/store", store)
	}
	if _, err := exec.LookPath(cfg.Worker.NixBinary); err != nil {
		return fmt.Errorf("--nix %q not found: install nix or give the path of its binary: %w", cfg.Worker.NixBinary, err)
	}
	return nil
}

// workerState returns the STATE column of `gradient worker list`: the
// state, and for an away worker when its jobs go to other workers.
func workerState(w web.WorkerInfo) string {
	if w.State == web.WorkerAway && w.AwayUntil != nil {
		return w.State + " until " + w.AwayUntil.UTC().Format(time.TimeOnly) + "Z"
	}
	return w.State
}

// workerJobs returns the JOBS column of `gradient worker list`: running
// jobs out of the slots the worker announced, or only the running jobs
// while it is not connected.
func workerJobs(w web.WorkerInfo) string {
	if w.MaxJobs == 0 {
		return strconv.Itoa(w.RunningJobs)
	}
	return fmt.Sprintf("%d/%d", w.RunningJobs, w.MaxJobs)
}

// listOrDash joins items with commas, or returns "-" when there are none.
func listOrDash(items []string) string {
	if len(items) == 0 {
		return "-"
	}
	return strings.Join(items, ",")
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}
