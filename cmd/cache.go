package cmd

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/dustin/go-humanize"
	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/cache"
)

func newCacheCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "cache", Short: "Inspect and configure the node's binary caches"}
	c.PersistentFlags().BoolVar(&cf.json, "json", false, "print the API's JSON object")
	c.AddCommand(&cobra.Command{
		Use:   "show [NAME]",
		Short: "Print a cache's substituter URL and public key (default cache: main)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			c, err := cl.Cache(cmd.Context(), cacheName(args))
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), c)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "cache:\t%s\n", c.Name)
			fmt.Fprintf(tw, "substituter:\t%s\n", c.URL)
			fmt.Fprintf(tw, "public key:\t%s\n", c.PublicKey)
			return tw.Flush()
		},
	})
	c.AddCommand(newUpstreamCommand(cf), newCacheEditCommand(cf), newCacheGCCommand(cf), newCacheStatsCommand(cf))
	return c
}

// cacheName returns the cache named by the first argument, or main.
func cacheName(args []string) string {
	if len(args) > 0 {
		return args[0]
	}
	return cache.DefaultName
}

func newUpstreamCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "upstream", Short: "Manage the upstream caches that misses are pulled from"}

	var (
		keys     []string
		priority int
	)
	add := &cobra.Command{
		Use:   "add CACHE URL --key PUBLIC-KEY",
		Short: "Add an upstream, or replace the one with the same URL",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(keys) == 0 {
				return fmt.Errorf("--key is missing: give the public key that signs the upstream's narinfos, such as %s", cache.DefaultUpstreamKey)
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			ups, err := cl.AddUpstream(cmd.Context(), args[0], cache.Upstream{URL: args[1], PublicKeys: keys, Priority: priority})
			if err != nil {
				return err
			}
			return printUpstreams(cmd.OutOrStdout(), cf.json, ups)
		},
	}
	add.Flags().StringSliceVar(&keys, "key", nil, "trusted public key of the upstream, name:base64 (repeat or separate with commas)")
	add.Flags().IntVar(&priority, "priority", cache.DefaultUpstreamPriority, "priority among upstreams that hold a path; the lowest number wins")

	list := &cobra.Command{
		Use:   "list CACHE",
		Short: "List a cache's upstreams",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			ups, err := cl.Upstreams(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			return printUpstreams(cmd.OutOrStdout(), cf.json, ups)
		},
	}

	remove := &cobra.Command{
		Use:   "remove CACHE URL",
		Short: "Remove an upstream",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			ups, err := cl.RemoveUpstream(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			return printUpstreams(cmd.OutOrStdout(), cf.json, ups)
		},
	}

	c.AddCommand(add, list, remove)
	return c
}

func printUpstreams(w io.Writer, asJSON bool, ups []cache.Upstream) error {
	if asJSON {
		return printJSON(w, ups)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "URL\tPRIORITY\tKEYS")
	for _, u := range ups {
		fmt.Fprintf(tw, "%s\t%d\t%s\n", u.URL, u.Priority, strings.Join(u.PublicKeys, ","))
	}
	return tw.Flush()
}

func newCacheEditCommand(cf *clientFlags) *cobra.Command {
	var (
		priority, lanPriority, keep int
		lanCIDRs, pins              []string
		maxSize                     string
	)
	c := &cobra.Command{
		Use:   "edit CACHE",
		Short: "Change a cache's priorities, LAN networks, size cap, kept evaluations or pins",
		Long: "Change only the settings whose flags are given. Clients inside a LAN CIDR get\n" +
			"--lan-priority in nix-cache-info, everyone else --priority; nix prefers the lower number.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			var update cache.SettingsUpdate
			flags := cmd.Flags()
			if flags.Changed("priority") {
				update.Priority = &priority
			}
			if flags.Changed("lan-priority") {
				update.LANPriority = &lanPriority
			}
			if flags.Changed("lan-cidr") {
				update.LANCIDRs = &lanCIDRs
			}
			if flags.Changed("keep-evaluations") {
				update.KeepEvaluations = &keep
			}
			if flags.Changed("pin") {
				update.Pins = &pins
			}
			if flags.Changed("max-size") {
				size, err := parseSize(maxSize)
				if err != nil {
					return err
				}
				update.MaxSize = &size
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			settings, err := cl.UpdateCacheSettings(cmd.Context(), args[0], update)
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), settings)
			}
			return printSettings(cmd.OutOrStdout(), settings)
		},
	}
	f := c.Flags()
	f.IntVar(&priority, "priority", 0, "nix-cache-info priority for clients outside the LAN CIDRs")
	f.IntVar(&lanPriority, "lan-priority", 0, "nix-cache-info priority for clients inside the LAN CIDRs (0: same as --priority)")
	f.StringSliceVar(&lanCIDRs, "lan-cidr", nil, "client networks that get --lan-priority, such as 192.168.0.0/16,fd00::/8")
	f.StringVar(&maxSize, "max-size", "", "size cap of the NAR files that gc enforces, such as 50GiB or 0 for none")
	f.IntVar(&keep, "keep-evaluations", 0, "keep the paths of this many last evaluations of each project (0: 3)")
	f.StringSliceVar(&pins, "pin", nil, "store path names that gc keeps: <hash>-<name> or a pattern such as glibc-*")
	return c
}

// parseSize parses a byte count such as "50GiB", "500M" or "0".
func parseSize(s string) (int64, error) {
	n, err := humanize.ParseBytes(s)
	if err != nil || n > 1<<62 {
		return 0, fmt.Errorf("--max-size %q is invalid: give a size such as 50GiB, 500MB or 0", s)
	}
	return int64(n), nil
}

func printSettings(w io.Writer, s cache.Settings) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "priority:\t%d\n", s.Priority)
	fmt.Fprintf(tw, "lan priority:\t%d\n", s.LANPriority)
	fmt.Fprintf(tw, "lan cidrs:\t%s\n", strings.Join(s.LANCIDRs, ","))
	maxSize := "none"
	if s.MaxSize > 0 {
		maxSize = humanize.IBytes(uint64(s.MaxSize))
	}
	fmt.Fprintf(tw, "max size:\t%s\n", maxSize)
	keep := s.KeepEvaluations
	if keep == 0 {
		keep = cache.DefaultKeepEvaluations
	}
	fmt.Fprintf(tw, "keep evaluations:\t%d\n", keep)
	fmt.Fprintf(tw, "pins:\t%s\n", strings.Join(s.Pins, ","))
	fmt.Fprintf(tw, "upstreams:\t%d\n", len(s.Upstreams))
	return tw.Flush()
}

func newCacheGCCommand(cf *clientFlags) *cobra.Command {
	var dryRun bool
	c := &cobra.Command{
		Use:   "gc [CACHE]",
		Short: "Remove least recently used paths until the cache fits its --max-size (default cache: main)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			report, err := cl.CollectGarbage(cmd.Context(), cacheName(args), cache.GCOptions{DryRun: dryRun})
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), report)
			}
			out := cmd.OutOrStdout()
			verb := "removed"
			if report.DryRun {
				verb = "would remove"
			}
			for _, p := range report.Evicted {
				fmt.Fprintf(out, "%s %s\n", verb, p)
			}
			fmt.Fprintf(out, "%s %d of %d paths (%d kept); size %s -> %s\n", verb, len(report.Evicted), report.Paths, report.Kept,
				humanize.IBytes(uint64(report.SizeBefore)), humanize.IBytes(uint64(report.SizeAfter)))
			return nil
		},
	}
	c.Flags().BoolVar(&dryRun, "dry-run", false, "print what would be removed and remove nothing")
	return c
}

func newCacheStatsCommand(cf *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "stats [CACHE]",
		Short: "Print the cache's metrics, the values /metrics exports (default cache: main)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			rows, err := cl.CacheStats(cmd.Context(), cacheName(args))
			if err != nil {
				return err
			}
			if cf.json {
				return printJSON(cmd.OutOrStdout(), rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "METRIC\tLABELS\tVALUE")
			for _, row := range rows {
				fmt.Fprintf(tw, "%s\t%s\t%g\n", row.Name, formatLabels(row.Labels), row.Value)
			}
			return tw.Flush()
		},
	}
}

func formatLabels(labels map[string]string) string {
	var parts []string
	for k, v := range labels {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}
