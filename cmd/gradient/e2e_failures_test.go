package main

import (
	"net/http"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// failuresFlake has a diamond, a chain of three, a failing leaf with a
// dependent, and an attribute that throws during evaluation.
const failuresFlake = `{
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: deps: text: builtins.derivation {
        inherit name system deps;
        builder = "/bin/sh";
        args = [ "-c" text ];
      };
      top = mk "diamond-top" [ ] "echo top > $out";
      left = mk "diamond-left" [ top ] "read x < ${top}; echo $x left > $out";
      right = mk "diamond-right" [ top ] "read x < ${top}; echo $x right > $out";
      bottom = mk "diamond-bottom" [ left right ] "read l < ${left}; read r < ${right}; echo $l $r > $out";
      c1 = mk "chain-1" [ ] "echo 1 > $out";
      c2 = mk "chain-2" [ c1 ] "read x < ${c1}; echo $x 2 > $out";
      c3 = mk "chain-3" [ c2 ] "read x < ${c2}; echo $x 3 > $out";
      broken = mk "broken-leaf" [ ] "echo this build fails on purpose >&2; exit 3";
      afterBroken = mk "after-broken" [ broken ] "echo never > $out";
    in {
      packages.${system} = {
        diamond = bottom;
        chain = c3;
        broken = broken;
        after-broken = afterBroken;
        throws = throw "this attribute fails to evaluate on purpose";
      };
    };
}`

// TestEvalErrorAndFailedBuild checks that an evaluation error in one
// attribute and a failing build are recorded against their entry points,
// that dependents of the failure never run, and that everything else is
// still built.
func TestEvalErrorAndFailedBuild(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "worker-store"))
	n.mustCLI("project", "create", "demo/failures", "--flake", writeFlake(t, failuresFlake), "--entry-points", "packages.*.*")

	_, progress, code := n.cli("project", "evaluate", "demo/failures", "--wait")
	if code != 1 {
		t.Errorf("evaluate --wait: exit %d, want 1\n%s", code, progress)
	}

	var show projectShow
	decodeJSON(t, n.mustCLI("project", "show", "demo/failures", "--json"), &show)
	if show.Evaluation.Status != "failed" {
		t.Errorf("evaluation status = %q, want failed", show.Evaluation.Status)
	}

	attrs := map[string]string{} // attribute -> eval error
	for _, ep := range show.Evaluation.EntryPoints {
		attrs[ep.Attr] = ep.EvalError
	}
	if len(attrs) != 5 {
		t.Errorf("entry points = %v, want 5", attrs)
	}
	if e := attrs["packages.x86_64-linux.throws"]; !strings.Contains(e, "this attribute fails to evaluate on purpose") {
		t.Errorf("eval error of throws = %q, want nix's message", e)
	}

	status := map[string]string{}
	var brokenBuild, afterBroken, failedDepBuild uint64
	var brokenDrv string
	for _, b := range show.Builds {
		status[b.Name] = b.Status
		switch b.Name {
		case "broken-leaf":
			brokenBuild, brokenDrv = b.ID, b.DrvPath
			if !strings.Contains(b.Error, "exit code 3") {
				t.Errorf("error of broken-leaf = %q, want nix's message with the exit code", b.Error)
			}
		case "after-broken":
			afterBroken, failedDepBuild = b.ID, b.FailedDependencyBuildID
			if !strings.HasSuffix(b.FailedDependency, "-broken-leaf.drv") {
				t.Errorf("failed dependency of after-broken = %q, want the broken-leaf .drv", b.FailedDependency)
			}
		}
	}
	if failedDepBuild != brokenBuild {
		t.Errorf("failed_dependency_build_id of after-broken = %d, want broken-leaf's build %d", failedDepBuild, brokenBuild)
	}
	if out := n.mustCLI("build", "show", brokenDrv); !strings.HasPrefix(out, "build "+itoa(brokenBuild)+" ") {
		t.Errorf("build show %s does not show build %d:\n%s", brokenDrv, brokenBuild, out)
	}
	_, whyErr, code := n.cli("build", "why", itoa(afterBroken))
	if wantWhy := "never ran: its input " + brokenDrv + " (build " + itoa(brokenBuild) + ") failed"; code != 1 || !strings.Contains(whyErr, wantWhy) {
		t.Errorf("build why %d: exit %d, %q; want exit 1 with %q", afterBroken, code, whyErr, wantWhy)
	}
	want := map[string]string{
		"diamond-top":    "succeeded",
		"diamond-left":   "succeeded",
		"diamond-right":  "succeeded",
		"diamond-bottom": "succeeded",
		"chain-1":        "succeeded",
		"chain-2":        "succeeded",
		"chain-3":        "succeeded",
		"broken-leaf":    "failed",
		"after-broken":   "dependency_failed",
	}
	for name, w := range want {
		if status[name] != w {
			t.Errorf("status of %s = %q, want %q", name, status[name], w)
		}
	}
	if len(status) != len(want) {
		t.Errorf("builds = %v, want exactly %d", status, len(want))
	}

	logText := n.mustCLI("build", "log", itoa(brokenBuild))
	if !strings.Contains(logText, "this build fails on purpose") {
		t.Errorf("log of broken-leaf = %q, want the builder's stderr", logText)
	}
	followed, followErr, code := n.cli("build", "log", "--follow", itoa(brokenBuild))
	if code != 1 || !strings.Contains(followErr, "failed") {
		t.Errorf("build log --follow of a failed build: exit %d, stderr %q, want exit 1 naming the failure", code, followErr)
	}
	if !strings.Contains(followed, "this build fails on purpose") {
		t.Errorf("build log --follow of broken-leaf = %q, want the builder's stderr", followed)
	}
	human := n.mustCLI("project", "show", "demo/failures")
	for _, s := range []string{"this attribute fails to evaluate on purpose", "dependency_failed", "eval error"} {
		if !strings.Contains(human, s) {
			t.Errorf("project show does not mention %q:\n%s", s, human)
		}
	}
}

// TestRestartAfterKill kills the node with SIGKILL while it builds and
// checks that a restart finishes the evaluation and that the cache serves
// no narinfo without its NAR.
func TestRestartAfterKill(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	store := storeDir(t, "worker-store")
	n := startNode(t, dataDir, store)
	flake := writeFlake(t, `{ outputs = { self }: let
	  mk = name: deps: text: builtins.derivation {
	    inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" text ]; };
	  first = mk "first" [ ] "echo first > $out";
	  slow = mk "slow" [ first ] "echo slow build started; sleep 3; echo done > $out";
	in { packages.x86_64-linux = { inherit first slow; }; }; }`)
	n.mustCLI("project", "create", "demo/restart", "--flake", flake)
	n.mustCLI("project", "evaluate", "demo/restart")

	// Wait until the slow build runs, then crash the node.
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(n.logText(), `msg="job assigned"`) || !strings.Contains(n.logText(), "slow.drv") {
		if time.Now().After(deadline) {
			t.Fatalf("slow build never started; log:\n%s", n.logText())
		}
		time.Sleep(50 * time.Millisecond)
	}
	n.kill()

	// The restarted node resumes the evaluation that the kill cut off.
	n2 := startNode(t, dataDir, store)
	var show projectShow
	deadline = time.Now().Add(3 * time.Minute)
	for {
		decodeJSON(t, n2.mustCLI("project", "show", "demo/restart", "--json"), &show)
		if show.Evaluation.Status == "succeeded" || show.Evaluation.Status == "failed" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("evaluation still %q three minutes after the restart", show.Evaluation.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if show.Evaluation.Status != "succeeded" {
		t.Errorf("resumed evaluation status = %q, want succeeded", show.Evaluation.Status)
	}
	if len(show.Builds) != 2 {
		t.Errorf("builds after restart = %d, want 2 (one per derivation)", len(show.Builds))
	}
	for _, b := range show.Builds {
		if b.Status != "succeeded" {
			t.Errorf("build %s status = %q, want succeeded", b.Name, b.Status)
		}
		for _, out := range b.Outputs {
			checkServed(t, n2, out)
		}
	}
}

// checkServed fails unless the node's cache serves a narinfo for the store
// path and the NAR file it points at.
func checkServed(t *testing.T, n *node, storePath string) {
	t.Helper()
	hash := strings.SplitN(filepath.Base(storePath), "-", 2)[0]
	resp, err := http.Get(n.cacheURL() + "/" + hash + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET narinfo of %s = %d, want 200", storePath, resp.StatusCode)
		return
	}
	var url string
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "URL: "); ok {
			url = v
		}
	}
	resp, err = http.Get(n.cacheURL() + "/" + url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET %s of %s = %d, want 200", url, storePath, resp.StatusCode)
	}
}
