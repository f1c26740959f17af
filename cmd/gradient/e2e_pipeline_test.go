package main

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// pipelineFlake is a chain of two: a 4 MB output of random bytes, which
// takes about two seconds to upload through a throttled connection, and
// a small build that reads it.
const pipelineFlake = `{ outputs = { self }: let
  mk = name: deps: text: builtins.derivation {
    inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" text ]; };
  big = mk "pipeline-big" [ ] "head -c 4000000 /dev/urandom > $out";
  small = mk "pipeline-small" [ big ] "head -c 16 ${big} > $out";
in { packages.x86_64-linux.small = small; }; }`

// TestChainLinkStartsDuringUpload builds a chain on one worker whose
// connection to the node is throttled. The second link starts while the
// first one's 4 MB output still uploads, because its input is in the
// worker's store, and both outputs still reach the cache.
func TestChainLinkStartsDuringUpload(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	proxy := startThrottleProxy(t, n.addr, 2<<20)
	token := strings.TrimSpace(n.mustCLI("worker", "register", "w1"))
	startWorker(t, n, "w1", token, "--server", proxy.url())
	waitWorkers(t, n, "w1")

	n.mustCLI("project", "create", "demo/pipeline", "--flake", writeFlake(t, pipelineFlake))
	n.mustCLI("project", "evaluate", "demo/pipeline")
	waitEvaluation(t, n, "demo/pipeline", isFinal)

	var show struct {
		Evaluation struct {
			Status string `json:"status"`
		} `json:"evaluation"`
		Builds []struct {
			Name       string            `json:"name"`
			Status     string            `json:"status"`
			WorkerID   string            `json:"worker_id"`
			Outputs    map[string]string `json:"outputs"`
			StartedAt  *time.Time        `json:"started_at"`
			FinishedAt *time.Time        `json:"finished_at"`
			Placement  *struct {
				JobID string `json:"job_id"`
			} `json:"placement"`
		} `json:"builds"`
	}
	decodeJSON(t, n.mustCLI("project", "show", "demo/pipeline", "--json"), &show)
	if show.Evaluation.Status != "succeeded" || len(show.Builds) != 2 {
		t.Fatalf("evaluation %q with %d builds, want succeeded with 2", show.Evaluation.Status, len(show.Builds))
	}
	byName := map[string]int{}
	for i, b := range show.Builds {
		byName[b.Name] = i
		if b.Status != "succeeded" || b.WorkerID != "w1" || b.StartedAt == nil || b.FinishedAt == nil {
			t.Fatalf("build %s = %q on %q, started %v, finished %v; want succeeded on w1", b.Name, b.Status, b.WorkerID, b.StartedAt, b.FinishedAt)
		}
		checkServed(t, n, b.Outputs["out"])
	}
	big, small := show.Builds[byName["pipeline-big"]], show.Builds[byName["pipeline-small"]]
	if big.Placement == nil || small.Placement == nil || big.Placement.JobID != small.Placement.JobID {
		t.Errorf("placements %+v and %+v, want one job for the chain", big.Placement, small.Placement)
	}
	if !small.StartedAt.Before(*big.FinishedAt) {
		t.Errorf("pipeline-small started at %v, pipeline-big finished at %v: want the second link started during the first one's upload",
			small.StartedAt, big.FinishedAt)
	}
	t.Logf("pipeline-small started %v before pipeline-big's upload ended", big.FinishedAt.Sub(*small.StartedAt))
}
