package protocol

import (
	"context"
	"slices"
	"testing"
)

// TestQueryPathsReturnsMissingNarSize checks that RemoteWorker.QueryPaths
// returns the held paths and the MissingNarSize of the worker's answer.
func TestQueryPathsReturnsMissingNarSize(t *testing.T) {
	th := newTestHub(t, nil)
	nodeEnd, workerEnd := Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go th.Attach(ctx, nodeEnd, "raw", "pipe")

	hello := &Hello{Version: Version, Capabilities: []Capability{CapBuild, CapCache}, Systems: []string{"x"}, MaxJobs: 1}
	if err := workerEnd.Write(ctx, hello); err != nil {
		t.Fatal(err)
	}
	if _, err := workerEnd.Read(ctx); err != nil {
		t.Fatal(err)
	}
	rw := th.waitJoined(t)

	type queryResult struct {
		have    []string
		missing uint64
		err     error
	}
	results := make(chan queryResult, 1)
	paths := []string{"/nix/store/a", "/nix/store/b"}
	go func() {
		have, missing, err := rw.QueryPaths(ctx, paths)
		results <- queryResult{have, missing, err}
	}()

	m, err := workerEnd.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q, ok := m.(*PathQuery)
	if !ok {
		t.Fatalf("worker read %T, want *PathQuery", m)
	}
	if !slices.Equal(q.Paths, paths) {
		t.Errorf("PathQuery.Paths = %q, want %q", q.Paths, paths)
	}
	if err := workerEnd.Write(ctx, &PathAnswer{ID: q.ID, Have: []string{"/nix/store/a"}, MissingNarSize: 4096}); err != nil {
		t.Fatal(err)
	}

	r := <-results
	if r.err != nil {
		t.Fatalf("QueryPaths = %v, want success", r.err)
	}
	if want := []string{"/nix/store/a"}; !slices.Equal(r.have, want) {
		t.Errorf("QueryPaths have = %q, want %q", r.have, want)
	}
	if r.missing != 4096 {
		t.Errorf("QueryPaths missing NAR size = %d, want 4096", r.missing)
	}
}
