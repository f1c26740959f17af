package main

import (
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// waitingFlake has a build that needs a system feature no worker has, and
// a dependent of it.
const waitingFlake = `{
  outputs = { self }:
    let
      system = "x86_64-linux";
      feat = builtins.derivation {
        name = "needs-feature"; inherit system; builder = "/bin/sh";
        args = [ "-c" "echo feature > $out" ];
        requiredSystemFeatures = [ "gradient-test-feature" ];
      };
    in {
      packages.${system}.after = builtins.derivation {
        name = "after-feature"; inherit system; builder = "/bin/sh";
        args = [ "-c" "read x < ${feat}; echo $x after > $out" ];
      };
    };
}`

// waitingShow is the part of `gradient project show --json` that
// describes waits.
type waitingShow struct {
	Builds []struct {
		ID                uint64 `json:"id"`
		Name              string `json:"name"`
		Status            string `json:"status"`
		Waiting           string `json:"waiting"`
		WaitingReason     string `json:"waiting_reason"`
		WaitingFor        string `json:"waiting_for"`
		WaitingForBuildID uint64 `json:"waiting_for_build_id"`
		WaitingUntil      string `json:"waiting_until"`
	} `json:"builds"`
}

// TestQueuedBuildShowsInputWait checks that a build whose input waits for
// a worker with a missing feature shows that wait, with the input's build
// and deadline, in project show, in its JSON and in build why.
func TestQueuedBuildShowsInputWait(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "worker-store"), "--unsupported-timeout", "10m")
	n.mustCLI("project", "create", "demo/waiting", "--flake", writeFlake(t, waitingFlake), "--entry-points", "packages.*.*")
	n.mustCLI("project", "evaluate", "demo/waiting")

	var show waitingShow
	deadline := time.Now().Add(time.Minute)
	for {
		show = waitingShow{}
		decodeJSON(t, n.mustCLI("project", "show", "demo/waiting", "--json"), &show)
		if len(show.Builds) == 2 && show.Builds[0].Waiting != "" && show.Builds[1].Waiting != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("builds still without waits after a minute: %+v", show.Builds)
		}
		time.Sleep(100 * time.Millisecond)
	}

	byName := map[string]int{}
	for i, b := range show.Builds {
		byName[b.Name] = i
	}
	feat, after := show.Builds[byName["needs-feature"]], show.Builds[byName["after-feature"]]
	if feat.WaitingReason != "no-worker" || feat.WaitingUntil == "" {
		t.Errorf("needs-feature: waiting_reason %q, waiting_until %q; want no-worker with a time", feat.WaitingReason, feat.WaitingUntil)
	}
	if after.Status != "queued" || after.WaitingReason != "inputs-building" {
		t.Errorf("after-feature: %s, waiting_reason %q; want queued, inputs-building", after.Status, after.WaitingReason)
	}
	if after.WaitingForBuildID != feat.ID || !strings.HasSuffix(after.WaitingFor, "-needs-feature.drv") {
		t.Errorf("after-feature waits for %q (build %d), want needs-feature (build %d)", after.WaitingFor, after.WaitingForBuildID, feat.ID)
	}
	if after.WaitingUntil != feat.WaitingUntil {
		t.Errorf("after-feature: waiting_until %q, want the deadline of needs-feature, %q", after.WaitingUntil, feat.WaitingUntil)
	}

	wantWait := "build " + itoa(feat.ID) + "), which is waiting for a worker with system x86_64-linux and features gradient-test-feature; fails at "
	human := n.mustCLI("project", "show", "demo/waiting")
	if !strings.Contains(human, "packages.x86_64-linux.after: build "+itoa(after.ID)+" waiting for input ") || !strings.Contains(human, wantWait) {
		t.Errorf("project show does not explain the queued entry point with %q:\n%s", wantWait, human)
	}
	_, whyErr, code := n.cli("build", "why", itoa(after.ID))
	if code != 1 || !strings.Contains(whyErr, "(inputs-building): waiting for input ") || !strings.Contains(whyErr, wantWait) {
		t.Errorf("build why %d: exit %d, %q; want exit 1 with the input's wait", after.ID, code, whyErr)
	}
}
