package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/scheduler/sim"
	"github.com/gradient-ci/gradient/web"
)

// remoteFlake has a chain, a diamond and a wide fan-out: fanWidth leaves
// on one base, and a derivation that depends on all of them. sleepSeconds
// slows the fan-out leaves down.
func remoteFlake(fanWidth, sleepSeconds int) string {
	return fmt.Sprintf(`{
  outputs = { self }:
    let
      system = "x86_64-linux";
      mk = name: deps: text: builtins.derivation {
        inherit name system deps;
        builder = "/bin/sh";
        args = [ "-c" text ];
      };
      # Sets enableParallelBuilding as nixpkgs' stdenv passes it.
      parallel = drv: builtins.derivation (drv.drvAttrs // { enableParallelBuilding = true; });
      c1 = mk "chain-1" [ ] "echo 1 > $out";
      c2 = mk "chain-2" [ c1 ] "read x < ${c1}; echo $x 2 > $out";
      c3 = mk "chain-3" [ c2 ] "read x < ${c2}; echo $x 3 > $out";
      top = mk "diamond-top" [ ] "echo top > $out";
      left = mk "diamond-left" [ top ] "read x < ${top}; echo $x left > $out";
      right = mk "diamond-right" [ top ] "read x < ${top}; echo $x right > $out";
      bottom = parallel (mk "diamond-bottom" [ left right ] "read l < ${left}; read r < ${right}; echo $l $r > $out");
      base = mk "fan-base" [ ] "echo base > $out";
      fan = builtins.genList (i: mk "fan-${toString i}" [ base ] "sleep %d; read x < ${base}; echo $x ${toString i} > $out") %d;
      all = mk "fan-all" fan "cat ${builtins.concatStringsSep " " (map toString fan)} > $out";
    in {
      packages.${system} = {
        chain = c3;
        diamond = bottom;
        fan-all = all;
      } // builtins.listToAttrs (builtins.genList (i: { name = "fan-${toString i}"; value = builtins.elemAt fan i; }) %d);
    };
}`, sleepSeconds, fanWidth, fanWidth)
}

// workerProc is a `gradient worker` process in a process group of its
// own, so that killing the group also kills the nix it runs.
type workerProc struct {
	name string
	cmd  *exec.Cmd
	done chan struct{}

	mu  sync.Mutex
	log bytes.Buffer
}

// startWorker runs `gradient worker` against n with a chroot store of its
// own.
func startWorker(t *testing.T, n *node, name, token string, extra ...string) *workerProc {
	t.Helper()
	args := append([]string{"worker", "--server", n.url(), "--token", token,
		"--store", storeDir(t, name+"-store"), "--log-level", "debug"}, extra...)
	w := &workerProc{name: name, cmd: exec.Command(gradientBin, args...), done: make(chan struct{})}
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stderr, err := w.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			w.mu.Lock()
			w.log.WriteString(sc.Text() + "\n")
			w.mu.Unlock()
		}
		w.cmd.Wait()
		close(w.done)
	}()
	t.Cleanup(func() {
		w.stop()
		if t.Failed() {
			t.Logf("worker %s log:\n%s", name, w.logText())
		}
	})
	return w
}

func (w *workerProc) logText() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.log.String()
}

// stop ends the worker with SIGTERM and waits for it.
func (w *workerProc) stop() {
	select {
	case <-w.done:
		return
	default:
	}
	syscall.Kill(-w.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(30 * time.Second):
		w.kill()
	}
}

// kill ends the worker and the nix it runs with SIGKILL, as a crash of its
// machine would.
func (w *workerProc) kill() {
	syscall.Kill(-w.cmd.Process.Pid, syscall.SIGKILL)
	<-w.done
}

// exited waits up to d for the worker to exit and reports whether it did.
func (w *workerProc) exited(d time.Duration) bool {
	select {
	case <-w.done:
		return true
	case <-time.After(d):
		return false
	}
}

// noUpstream removes the default upstream cache, if the node has one,
// because tests must not depend on cache.nixos.org: misses are then plain
// 404s.
func noUpstream(t *testing.T, n *node) {
	t.Helper()
	n.cli("cache", "upstream", "remove", "main", "https://cache.nixos.org")
}

// waitWorkers polls `gradient worker list` until every named worker is
// connected.
func waitWorkers(t *testing.T, n *node, names ...string) []web.WorkerInfo {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var ws []web.WorkerInfo
		decodeJSON(t, n.mustCLI("worker", "list", "--json"), &ws)
		connected := map[string]bool{}
		for _, w := range ws {
			connected[w.Name] = w.State == web.WorkerConnected
		}
		all := true
		for _, name := range names {
			all = all && connected[name]
		}
		if all {
			return ws
		}
		if time.Now().After(deadline) {
			t.Fatalf("workers %v not all connected within 60s: %+v", names, ws)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

type buildRecord struct {
	ID        uint64            `json:"id"`
	DrvPath   string            `json:"drv_path"`
	Name      string            `json:"name"`
	Status    string            `json:"status"`
	Outputs   map[string]string `json:"outputs"`
	WorkerID  string            `json:"worker_id"`
	Error     string            `json:"error"`
	Placement *struct {
		JobID    string `json:"job_id"`
		WorkerID string `json:"worker_id"`
		Links    int    `json:"links"`
	} `json:"placement"`
	OutputSize uint64 `json:"output_size"`
}

type evalShow struct {
	Evaluation struct {
		ID     uint64 `json:"id"`
		Status string `json:"status"`
		Error  string `json:"error"`
	} `json:"evaluation"`
	Builds []buildRecord `json:"builds"`
}

// TestRemoteWorkers runs a node without a local worker and three
// `gradient worker` processes with stores of their own. The evaluation is
// sharded across them, every derivation is built once, and every output
// is served by the node's cache.
func TestRemoteWorkers(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)

	// A wrong token is rejected once, and the worker exits with the reason.
	bad := startWorker(t, n, "bad", "not-a-token")
	if !bad.exited(60 * time.Second) {
		t.Fatal("a worker with a wrong token is still running after 60s")
	}
	if !strings.Contains(bad.logText(), "invalid worker token") {
		t.Errorf("log of the worker with a wrong token does not name the token:\n%s", bad.logText())
	}
	if c := strings.Count(n.logText(), `msg="worker connection rejected" component=hub reason="invalid token"`); c != 1 {
		t.Errorf("node logged %d rejections of the wrong token, want 1", c)
	}

	names := []string{"w1", "w2", "w3"}
	procs := map[string]*workerProc{}
	for _, name := range names {
		token := strings.TrimSpace(n.mustCLI("worker", "register", name))
		if len(token) < 32 || strings.ContainsAny(token, " \n") {
			t.Fatalf("worker register printed %q, want the token alone", token)
		}
		procs[name] = startWorker(t, n, name, token, "--max-jobs", "2")
	}
	waitWorkers(t, n, names...)
	if _, stderr, code := n.cli("worker", "register", "w1"); code == 0 || !strings.Contains(stderr, "gradient worker revoke w1") {
		t.Errorf("worker register of a taken name: exit %d, %q; want an error that says how to free the name", code, stderr)
	}

	const fanWidth = 12
	n.mustCLI("project", "create", "demo/remote", "--flake", writeFlake(t, remoteFlake(fanWidth, 0)), "--entry-points", "packages.*.*")
	_, progress, code := n.cli("project", "evaluate", "demo/remote", "--wait")
	if code != 0 {
		t.Fatalf("evaluate --wait: exit %d\n%s", code, progress)
	}

	var show evalShow
	decodeJSON(t, n.mustCLI("project", "show", "demo/remote", "--json"), &show)
	if show.Evaluation.Status != "succeeded" {
		t.Fatalf("evaluation status = %q, want succeeded (error %q)", show.Evaluation.Status, show.Evaluation.Error)
	}
	// chain 3 + diamond 4 + base, leaves and fan-all.
	if want := 3 + 4 + 1 + fanWidth + 1; len(show.Builds) != want {
		t.Errorf("builds = %d, want one per derivation, %d", len(show.Builds), want)
	}
	byWorker := map[string]int{}
	seen := map[string]bool{}
	for _, b := range show.Builds {
		if seen[b.DrvPath] {
			t.Errorf("derivation %s has two builds", b.DrvPath)
		}
		seen[b.DrvPath] = true
		if b.Status != "succeeded" {
			t.Errorf("build of %s status = %q, want succeeded (error %q)", b.Name, b.Status, b.Error)
		}
		byWorker[b.WorkerID]++
		for _, out := range b.Outputs {
			checkServed(t, n, out)
		}
	}
	if len(byWorker) < 2 {
		t.Errorf("builds ran on workers %v, want at least two of them", byWorker)
	}
	checkChainOneJob(t, n, show.Builds, "chain-1", "chain-2", "chain-3")
	checkGraph(t, n, "demo/remote", len(show.Builds), "diamond-bottom")
	if !strings.Contains(n.logText(), `msg="evaluating entry points in shards"`) || !strings.Contains(n.logText(), "shards=3") {
		t.Errorf("node log does not show the evaluation sharded across 3 workers")
	}

	var listed []web.WorkerInfo
	decodeJSON(t, n.mustCLI("worker", "list", "--json"), &listed)
	total := uint64(0)
	for _, w := range listed {
		total += w.Builds
	}
	if total != uint64(len(show.Builds)) {
		t.Errorf("worker list counts %d builds, want %d: %+v", total, len(show.Builds), listed)
	}

	// A revoked worker is disconnected, and its next connection is
	// rejected, so it exits.
	n.mustCLI("worker", "revoke", "w3")
	if !procs["w3"].exited(60 * time.Second) {
		t.Fatal("revoked worker w3 is still running after 60s")
	}
	if !strings.Contains(procs["w3"].logText(), "invalid worker token") {
		t.Errorf("log of the revoked worker does not say why it stopped:\n%s", procs["w3"].logText())
	}
}

// checkChainOneJob fails unless the named builds, a chain in which each
// link is the only dependent of the one before, were one job on one
// worker: each link started where its input was built, so no input
// crossed the network. It also checks that `gradient build why` explains
// the placement.
func checkChainOneJob(t *testing.T, n *node, builds []buildRecord, names ...string) {
	t.Helper()
	byName := map[string]buildRecord{}
	for _, b := range builds {
		byName[b.Name] = b
	}
	first := byName[names[0]]
	if first.Placement == nil {
		t.Fatalf("build %s has no placement: %+v", first.Name, first)
	}
	for _, name := range names {
		b := byName[name]
		if b.Placement == nil || b.Placement.JobID != first.Placement.JobID || b.Placement.Links != len(names) {
			t.Errorf("build %s placement = %+v, want job %s of %d links", name, b.Placement, first.Placement.JobID, len(names))
		}
		if b.WorkerID == "" || b.WorkerID != first.WorkerID {
			t.Errorf("build %s ran on %q, want %q like %s", name, b.WorkerID, first.WorkerID, names[0])
		}
		if b.OutputSize == 0 {
			t.Errorf("build %s output_size = 0, want the NAR size the worker reported", name)
		}
	}

	why := n.mustCLI("build", "why", itoa(byName[names[len(names)-1]].ID))
	for _, want := range []string{"worker: " + first.WorkerID, "job: " + first.Placement.JobID, "candidates:", "runner-up:", "fetch", "total"} {
		if !strings.Contains(why, want) {
			t.Errorf("build why does not show %q:\n%s", want, why)
		}
	}
}

// checkGraph fails unless `gradient project graph --json` writes a file
// that the simulator loads, with one derivation per build, and marks the
// derivations named parallel, and no others, as parallel builds.
func checkGraph(t *testing.T, n *node, project string, builds int, parallel ...string) {
	t.Helper()
	out := n.mustCLI("project", "graph", project, "--json")
	g, err := sim.LoadGraph(strings.NewReader(out))
	if err != nil {
		t.Fatalf("sim.LoadGraph(project graph --json) = %v\n%s", err, out)
	}
	if len(g.Derivations) != builds {
		t.Errorf("graph has %d derivations, want %d", len(g.Derivations), builds)
	}
	var file sim.GraphFile
	decodeJSON(t, out, &file)
	timed := 0
	for _, d := range file.Derivations {
		if d.BuildTimeSeconds > 0 {
			timed++
		}
		if want := slices.Contains(parallel, d.Name); d.Parallel != want {
			t.Errorf("derivation %s parallel_building = %t, want %t", d.Name, d.Parallel, want)
		}
	}
	if timed == 0 {
		t.Errorf("no derivation of the graph has a build time:\n%s", out)
	}
}

// slowFlake has a quick input, a slow build on it and a dependent of the
// slow build.
const slowFlake = `{ outputs = { self }: let
  mk = name: deps: text: builtins.derivation {
    inherit name deps; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" text ]; };
  first = mk "first" [ ] "echo first > $out";
  slow = mk "slow" [ first ] "echo slow build started; sleep 4; read x < ${first}; echo $x slow > $out";
  last = mk "last" [ slow ] "read x < ${slow}; echo $x last > $out";
in { packages.x86_64-linux = { inherit first slow last; }; }; }`

// registerWorkers registers and starts one worker per name.
func registerWorkers(t *testing.T, n *node, names ...string) map[string]*workerProc {
	t.Helper()
	procs := map[string]*workerProc{}
	for _, name := range names {
		token := strings.TrimSpace(n.mustCLI("worker", "register", name))
		procs[name] = startWorker(t, n, name, token)
	}
	waitWorkers(t, n, names...)
	return procs
}

// waitEvaluation polls `gradient project show` until fn accepts it or the
// evaluation is final, and returns it.
func waitEvaluation(t *testing.T, n *node, project string, fn func(evalShow) bool) evalShow {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		var show evalShow
		decodeJSON(t, n.mustCLI("project", "show", project, "--json"), &show)
		status := show.Evaluation.Status
		if fn(show) || status == "succeeded" || status == "failed" || status == "aborted" {
			return show
		}
		if time.Now().After(deadline) {
			t.Fatalf("evaluation of %s still %q after 3 minutes: %+v", project, status, show.Builds)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// isFinal makes waitEvaluation wait for the end of the evaluation.
func isFinal(evalShow) bool { return false }

// checkAllBuilt fails unless the evaluation succeeded with one build per
// derivation of slowFlake, each served by the cache.
func checkAllBuilt(t *testing.T, n *node, show evalShow) {
	t.Helper()
	if show.Evaluation.Status != "succeeded" {
		t.Errorf("evaluation status = %q, want succeeded (error %q)", show.Evaluation.Status, show.Evaluation.Error)
	}
	if len(show.Builds) != 3 {
		t.Errorf("builds = %d, want one per derivation, 3", len(show.Builds))
	}
	for _, b := range show.Builds {
		if b.Status != "succeeded" {
			t.Errorf("build %s status = %q, want succeeded (error %q)", b.Name, b.Status, b.Error)
		}
		for _, out := range b.Outputs {
			checkServed(t, n, out)
		}
	}
}

// TestWorkerKilledMidBuild kills the worker that runs the slow build, with
// SIGKILL and the nix it runs. The job is queued again and built by the
// other worker, and the evaluation ends with one result per derivation.
func TestWorkerKilledMidBuild(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	// A killed worker's connection drops, so its job waits a lease for
	// it to come back before it goes to the other worker.
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker", "--worker-lease", "5s")
	noUpstream(t, n)
	procs := registerWorkers(t, n, "w1", "w2")
	n.mustCLI("project", "create", "demo/kill", "--flake", writeFlake(t, slowFlake))
	n.mustCLI("project", "evaluate", "demo/kill")

	var victim string
	show := waitEvaluation(t, n, "demo/kill", func(show evalShow) bool {
		for _, b := range show.Builds {
			if b.Name == "slow" && b.Status == "building" {
				victim = b.WorkerID
				return true
			}
		}
		return false
	})
	if victim == "" {
		t.Fatalf("the slow build never ran: evaluation %q, builds %+v", show.Evaluation.Status, show.Builds)
	}
	procs[victim].kill()

	show = waitEvaluation(t, n, "demo/kill", isFinal)
	checkAllBuilt(t, n, show)
	for _, b := range show.Builds {
		if b.Name == "slow" && b.WorkerID == victim {
			t.Errorf("slow was recorded as built by %s, the killed worker", victim)
		}
	}
	if !strings.Contains(n.logText(), `msg="worker removed; its unfinished jobs are queued again" component=driver worker_id=`+victim) {
		t.Errorf("node log does not show %s removed and its job queued again", victim)
	}
}

// TestNodeRestartMidEvaluation kills the node with SIGKILL during an
// evaluation and starts it again on the same address. The workers
// reconnect with backoff and the evaluation completes.
func TestNodeRestartMidEvaluation(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	n := startNode(t, dataDir, storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	procs := registerWorkers(t, n, "w1", "w2")
	n.mustCLI("project", "create", "demo/restart", "--flake", writeFlake(t, slowFlake))
	n.mustCLI("project", "evaluate", "demo/restart")

	show := waitEvaluation(t, n, "demo/restart", func(show evalShow) bool {
		return show.Evaluation.Status == "evaluating" || show.Evaluation.Status == "building"
	})
	interrupted := show.Evaluation.Status
	n.kill()

	n2 := startNode(t, dataDir, storeDir(t, "unused-store-2"), "--no-worker", "--listen", n.addr)
	waitWorkers(t, n2, "w1", "w2")
	show = waitEvaluation(t, n2, "demo/restart", isFinal)
	checkAllBuilt(t, n2, show)

	for name, w := range procs {
		if !strings.Contains(w.logText(), "reconnecting") {
			t.Errorf("worker %s did not log a reconnect after the node was killed while %s", name, interrupted)
		}
	}
}
