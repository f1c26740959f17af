package cmd

import (
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
)

func newBuildCommand(cf *clientFlags) *cobra.Command {
	c := &cobra.Command{Use: "build", Short: "Inspect builds"}
	show := newBuildShowCommand(cf)
	show.Flags().BoolVar(&cf.json, "json", false, "print the API's JSON object")
	c.AddCommand(show, newBuildLogCommand(cf))
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
			_, err = io.Copy(cmd.OutOrStdout(), body)
			return err
		},
	}
	c.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the build finishes")
	return c
}
