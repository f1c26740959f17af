package meshsim

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestSmallMesh runs a simulation of 12 nodes. Environment variables make
// it larger, such as 200 nodes for the figures in docs/mesh.md:
//
//	GRADIENT_MESH_SIM_NODES=200 go test -run TestSmallMesh -v -timeout 30m ./mesh/meshsim/
//
// GRADIENT_MESH_SIM_PATHS sets Options.Paths, GRADIENT_MESH_SIM_LATENCY
// Options.Latency (a Go duration such as "5ms"), and
// GRADIENT_MESH_SIM_ANNOUNCE_CONCURRENCY Options.AnnounceConcurrency.
func TestSmallMesh(t *testing.T) {
	opts := Options{Nodes: 12, Degree: 3, Paths: 100, Lookups: 20, Builds: 5}
	if v := os.Getenv("GRADIENT_MESH_SIM_NODES"); v != "" {
		opts = Options{Nodes: intEnv(t, "GRADIENT_MESH_SIM_NODES")}
	}
	if os.Getenv("GRADIENT_MESH_SIM_PATHS") != "" {
		opts.Paths = intEnv(t, "GRADIENT_MESH_SIM_PATHS")
	}
	if os.Getenv("GRADIENT_MESH_SIM_ANNOUNCE_CONCURRENCY") != "" {
		opts.AnnounceConcurrency = intEnv(t, "GRADIENT_MESH_SIM_ANNOUNCE_CONCURRENCY")
	}
	if v := os.Getenv("GRADIENT_MESH_SIM_LATENCY"); v != "" {
		latency, err := time.ParseDuration(v)
		if err != nil || latency <= 0 {
			t.Fatalf("GRADIENT_MESH_SIM_LATENCY=%q is not a positive duration such as 5ms", v)
		}
		opts.Latency = latency
	}

	timeout := 25 * time.Minute
	if deadline, ok := t.Deadline(); ok {
		timeout = time.Until(deadline) - 30*time.Second
	}

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	result, err := Run(ctx, opts, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + result.String())

	if result.LookupFailures != 0 {
		t.Errorf("LookupFailures = %d, want 0", result.LookupFailures)
	}
	if result.SpreadMissing != 0 {
		t.Errorf("SpreadMissing = %d, want 0", result.SpreadMissing)
	}
}

// intEnv returns the environment variable name as a positive integer.
func intEnv(t *testing.T, name string) int {
	t.Helper()

	v := os.Getenv(name)
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q is not a positive integer", name, v)
	}

	return n
}
