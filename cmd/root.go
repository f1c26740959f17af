// Package cmd holds the cobra wiring of the gradient command. Each command
// parses its flags and calls into node, web/client or scheduler; the work
// itself lives there.
package cmd

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/node"
	"github.com/gradient-ci/gradient/web/client"
)

// Execute runs the gradient command with os.Args and returns the exit
// code.
func Execute() int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	root := newRootCommand()
	usageError := false
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		usageError = true
		return fmt.Errorf("%w\nRun '%s --help' for usage.", err, c.CommandPath())
	})
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return 0
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintln(os.Stderr, "gradient:", err)
	if !usageError && isUsageError(err) {
		fmt.Fprintf(os.Stderr, "Run '%s --help' for usage.\n", cmd.CommandPath())
	}
	return 1
}

// isUsageError reports whether err is cobra's complaint about the command
// line, as opposed to an error of the command itself.
func isUsageError(err error) bool {
	msg := err.Error()
	for _, prefix := range []string{"unknown command", "accepts ", "requires at least", "required flag", "unknown flag", "unknown shorthand"} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// exitError ends the command with a code after it has already printed why.
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// clientFlags are the flags of every command that talks to a node.
type clientFlags struct {
	server  string
	token   string
	dataDir string
	json    bool
}

func newRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "gradient",
		Short:         "Nix CI server, scheduler, worker and binary cache",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	cf := &clientFlags{}
	root.PersistentFlags().StringVar(&cf.server, "server", envOr("GRADIENT_SERVER", "http://127.0.0.1:3000"), "URL of the node's API (env GRADIENT_SERVER)")
	root.PersistentFlags().StringVar(&cf.token, "token", os.Getenv("GRADIENT_TOKEN"), "API token (env GRADIENT_TOKEN; default: read from DATA_DIR/"+node.AdminTokenFile+")")
	root.PersistentFlags().StringVar(&cf.dataDir, "data-dir", envOr("GRADIENT_DATA_DIR", "gradient-data"), "node data directory (env GRADIENT_DATA_DIR)")

	root.AddCommand(
		newServeCommand(cf),
		newProjectCommand(cf),
		newBuildCommand(cf),
		newCacheCommand(cf),
		newSimCommand(),
		newWorkerCommand(cf),
		newMeshCommand(cf),
	)
	return root
}

// client returns an API client, reading the token from the data directory
// when neither --token nor GRADIENT_TOKEN gives one.
func (cf *clientFlags) client() (*client.Client, error) {
	token := cf.token
	if token == "" {
		path := filepath.Join(cf.dataDir, node.AdminTokenFile)
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("no API token: pass --token or GRADIENT_TOKEN, or run where %s is readable (%v)", path, err)
		}
		token = strings.TrimSpace(string(b))
	}
	return client.New(cf.server, token)
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// splitProject parses "ORG/PROJECT".
func splitProject(arg string) (org, project string, err error) {
	org, project, ok := strings.Cut(arg, "/")
	if !ok || org == "" || project == "" || strings.Contains(project, "/") {
		return "", "", fmt.Errorf("project %q is invalid: write it as ORG/PROJECT, such as demo/hello", arg)
	}
	return org, project, nil
}
