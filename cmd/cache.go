package cmd

import (
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newCacheCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "cache", Short: "Inspect the node's binary caches"}
	c.PersistentFlags().BoolVar(&cf.json, "json", false, "print the API's JSON object")
	c.AddCommand(&cobra.Command{
		Use:   "show [NAME]",
		Short: "Print a cache's substituter URL and public key (default cache: main)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := "main"
			if len(args) == 1 {
				name = args[0]
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			c, err := cl.Cache(cmd.Context(), name)
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
	return c
}
