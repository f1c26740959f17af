package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestServeRejectsMissingNix starts a node whose --nix does not exist. It
// must fail at start and name the binary, not at the first evaluation.
func TestServeRejectsMissingNix(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gradientBin, "serve", "--listen", "127.0.0.1:0",
		"--data-dir", filepath.Join(t.TempDir(), "data"), "--no-default-upstream", "--nix", "/nonexistent/nix")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		t.Fatalf("serve --nix /nonexistent/nix exited 0, want a failure; log:\n%s", stderr.String())
	}
	log := stderr.String()
	if strings.Contains(log, "in-process worker started") {
		t.Errorf("serve logged that the in-process worker started:\n%s", log)
	}
	if !strings.Contains(log, `"/nonexistent/nix"`) || !strings.Contains(log, "--no-worker") {
		t.Errorf("serve error does not name the binary and the way out:\n%s", log)
	}
}

// TestNoWorkerEvaluationSaysWhy starts a node with --no-worker and no
// remote worker: the queued evaluation reports why it waits.
func TestNoWorkerEvaluationSaysWhy(t *testing.T) {
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	n.mustCLI("project", "create", "demo/idle", "--flake", writeFlake(t, slowFlake))
	n.mustCLI("project", "evaluate", "demo/idle")

	want := "waiting for a worker that can evaluate: this node runs with --no-worker; connect one with 'gradient worker'"
	deadline := time.Now().Add(time.Minute)
	for {
		human := n.mustCLI("project", "show", "demo/idle")
		if strings.Contains(human, want) {
			if !strings.Contains(human, ": queued") {
				t.Errorf("project show of a waiting evaluation does not say queued:\n%s", human)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("project show does not say why the evaluation waits within 1 min:\n%s", human)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if c := strings.Count(n.logText(), "evaluation queued: no connected worker evaluates"); c != 1 {
		t.Errorf("node logged the wait %d times, want once", c)
	}
}

// unsupportedFlake has a build the in-process worker can run, one for a
// system it lacks, one that needs a feature it lacks, and a dependent of
// each of the latter two.
const unsupportedFlake = `{ outputs = { self }: let
  mk = system: name: deps: extra: builtins.derivation ({
    inherit name deps system; builder = "/bin/sh"; args = [ "-c" "echo ${name} > $out" ]; } // extra);
  native = mk "x86_64-linux" "native" [ ] { };
  arm = mk "aarch64-linux" "arm" [ ] { };
  afterArm = mk "aarch64-linux" "after-arm" [ arm ] { };
  feature = mk "x86_64-linux" "needs-feature" [ ] { requiredSystemFeatures = [ "gradient-none" ]; };
  afterFeature = mk "x86_64-linux" "after-feature" [ feature native ] { };
in { packages.x86_64-linux = { inherit native arm afterArm feature afterFeature; }; }; }`

// TestUnsupportedBuildsFail evaluates a flake with builds no worker can
// run, with --unsupported-timeout 0: they fail at once, their dependents
// are dependency_failed, and evaluate --wait returns.
func TestUnsupportedBuildsFail(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "worker-store"), "--unsupported-timeout", "0")
	n.mustCLI("project", "create", "demo/unsupported", "--flake", writeFlake(t, unsupportedFlake))
	_, progress, code := n.cli("project", "evaluate", "demo/unsupported", "--wait")
	if code != 1 {
		t.Errorf("evaluate --wait: exit %d, want 1\n%s", code, progress)
	}

	var show evalShow
	decodeJSON(t, n.mustCLI("project", "show", "demo/unsupported", "--json"), &show)
	if show.Evaluation.Status != "failed" {
		t.Errorf("evaluation status = %q, want failed", show.Evaluation.Status)
	}
	byName := map[string]buildRecord{}
	for _, b := range show.Builds {
		byName[b.Name] = b
	}
	want := map[string]struct{ status, err string }{
		"native":        {"succeeded", ""},
		"arm":           {"failed", "no worker for system aarch64-linux: connect a worker that has it, then evaluate again"},
		"after-arm":     {"dependency_failed", ""},
		"needs-feature": {"failed", "no worker for system x86_64-linux with features [gradient-none]: connect a worker that has them, then evaluate again"},
		"after-feature": {"dependency_failed", ""},
	}
	for name, w := range want {
		b := byName[name]
		if b.Status != w.status || b.Error != w.err {
			t.Errorf("build %s = %q with error %q, want %q with %q", name, b.Status, b.Error, w.status, w.err)
		}
	}
}
