package meshsim

import (
	"context"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestSmallMesh runs a simulation of 12 nodes. Set GRADIENT_MESH_SIM_NODES
// to run a larger one, such as 200 for the figures in docs/mesh.md:
//
//	GRADIENT_MESH_SIM_NODES=200 go test -run TestSmallMesh -v -timeout 30m ./mesh/meshsim/
func TestSmallMesh(t *testing.T) {
	opts := Options{Nodes: 12, Degree: 3, Paths: 100, Lookups: 20, Builds: 5}
	if v := os.Getenv("GRADIENT_MESH_SIM_NODES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("GRADIENT_MESH_SIM_NODES=%q: %v", v, err)
		}
		opts = Options{Nodes: n}
	}
	if v := os.Getenv("GRADIENT_MESH_SIM_ANNOUNCE_CONCURRENCY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("GRADIENT_MESH_SIM_ANNOUNCE_CONCURRENCY=%q: %v", v, err)
		}
		opts.AnnounceConcurrency = n
	}

	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
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
