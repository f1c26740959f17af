package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// waits returns the live waits of an evaluation's unfinished builds by
// derivation name, as the API gets them.
func (h *harness) waits(evalID uint64) map[string]db.Wait {
	h.t.Helper()
	byPath := map[string]string{}
	var paths []string
	for name, b := range h.builds(evalID) {
		if !b.Status.Finished() {
			byPath[b.DrvPath] = name
			paths = append(paths, b.DrvPath)
		}
	}
	waits, err := h.drv.ExplainWaits(h.ctx, evalID, paths)
	if err != nil {
		h.t.Fatalf("ExplainWaits(%d) = %v", evalID, err)
	}
	byName := map[string]db.Wait{}
	for p, w := range waits {
		byName[byPath[p]] = w
	}
	return byName
}

// waitGraph has a build that needs a feature no worker has, a dependent
// and a transitive dependent of it, and two builds that compete for one
// slot.
var waitGraph = graphResult(
	testDrv{name: "kvm", features: []string{"kvm"}},
	testDrv{name: "after-kvm", inputs: []string{"kvm"}},
	testDrv{name: "after-after-kvm", inputs: []string{"after-kvm"}},
	testDrv{name: "slot-a"},
	testDrv{name: "slot-b"},
)

func TestWaitsNameReasonAndInput(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	started := make(chan string, 8)
	workers, _ := blockingWorkers(waitGraph, release, started, "w1")
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", workers["w1"], protocol.ServeConfig{MaxJobs: 1})
	id := h.evaluate("waits")
	<-started
	h.waitFor("a slot build building", func() bool {
		bs := h.builds(id)
		return bs["slot-a"].Status == db.BuildBuilding || bs["slot-b"].Status == db.BuildBuilding
	})

	bs := h.builds(id)
	waits := h.waits(id)
	deadline := "fails at 2026-01-02T03:09:05Z unless one connects"
	kvm := storePath("kvm.drv")

	w := waits["kvm"]
	if w.Reason != string(scheduler.NoWorker) {
		t.Errorf("kvm: reason %q, want no-worker", w.Reason)
	}
	if want := "waiting for a worker with system x86_64-linux and features kvm; " + deadline; w.Text != want {
		t.Errorf("kvm: waiting %q, want %q", w.Text, want)
	}

	w = waits["after-kvm"]
	if w.Reason != string(scheduler.InputsBuilding) || w.For != kvm || w.ForBuildID != bs["kvm"].ID {
		t.Errorf("after-kvm: reason %q for %q (build %d), want inputs-building for kvm (build %d)", w.Reason, w.For, w.ForBuildID, bs["kvm"].ID)
	}
	want := "waiting for input " + kvm + " (build " + db.FormatID(bs["kvm"].ID) + "), which is waiting for a worker with system x86_64-linux and features kvm; " + deadline
	if w.Text != want {
		t.Errorf("after-kvm: waiting %q, want %q", w.Text, want)
	}
	if w.Until.IsZero() || !w.Until.Equal(waits["kvm"].Until) {
		t.Errorf("after-kvm: until %v, want kvm's deadline %v", w.Until, waits["kvm"].Until)
	}

	w = waits["after-after-kvm"]
	if w.For != kvm {
		t.Errorf("after-after-kvm: waiting for %q, want the root blocker kvm", w.For)
	}
	if !strings.HasPrefix(w.Text, "waiting for input "+storePath("after-kvm.drv")+" (build ") || !strings.Contains(w.Text, ", which waits for "+kvm+" (build ") {
		t.Errorf("after-after-kvm: waiting %q, want its input after-kvm, which waits for kvm", w.Text)
	}

	// One of the two builds runs in w1's only slot, and the other waits
	// for it.
	building, queued := "slot-a", "slot-b"
	if bs["slot-b"].Status == db.BuildBuilding {
		building, queued = "slot-b", "slot-a"
	}
	if w, ok := waits[building]; ok && w.Text != "" {
		t.Errorf("%s is building but waits: %q", building, w.Text)
	}
	w = waits[queued]
	if w.Reason != string(scheduler.NoFreeSlot) {
		t.Errorf("%s: reason %q, want no-free-slot", queued, w.Reason)
	}
	if want := "waiting for a free slot on worker w1, the only one with system x86_64-linux"; w.Text != want {
		t.Errorf("%s: waiting %q, want %q", queued, w.Text, want)
	}
}

func TestSharedDerivationGetsFirstWait(t *testing.T) {
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", instantWorker(unsupportedGraph), protocol.ServeConfig{})
	first := h.evaluate("first")
	h.waitBuild(first, "native", db.BuildSucceeded)

	h.clock.Advance(2 * time.Minute)
	second := h.evaluate("second")
	h.waitBuild(second, "native", db.BuildSucceeded)

	deadline := "fails at 2026-01-02T03:09:05Z unless one connects"
	want := "waiting for a worker with system aarch64-linux and features kvm; " + deadline
	if b := h.builds(second)["arm"]; b.Waiting != want || b.WaitingReason != string(scheduler.NoWorker) {
		t.Errorf("second evaluation's arm: stored waiting %q (%q), want %q (no-worker)", b.Waiting, b.WaitingReason, want)
	}
	w := h.waits(second)["after-arm"]
	if w.Reason != string(scheduler.InputsBuilding) || !strings.HasSuffix(w.Text, deadline) {
		t.Errorf("second evaluation's after-arm: waiting %q (%q), want inputs-building that ends with %q", w.Text, w.Reason, deadline)
	}

	// Both evaluations' builds fail at the first deadline.
	h.clock.Advance(3 * time.Minute)
	h.tick()
	for _, id := range []uint64{first, second} {
		h.waitStatus(id, db.EvalFailed)
		b := h.builds(id)["arm"]
		if b.Status != db.BuildFailed || b.Waiting != "" || b.WaitingReason != "" || b.WaitingUntil != nil {
			t.Errorf("evaluation %d: arm %q, waiting %q (%q, until %v); want failed with no wait", id, b.Status, b.Waiting, b.WaitingReason, b.WaitingUntil)
		}
	}
}

// TestWaitRestartsAfterNodeFailure adds a second evaluation of a
// derivation that the node failed for want of a worker while the first
// evaluation still runs: the scheduler still holds it, so its wait
// starts again and it fails in turn.
func TestWaitRestartsAfterNodeFailure(t *testing.T) {
	res := graphResult(testDrv{name: "slow"}, testDrv{name: "arm", system: "aarch64-linux"})
	release := make(chan struct{})
	defer close(release)
	started := make(chan string, 8)
	workers, _ := blockingWorkers(res, release, started, "w1")
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", workers["w1"], protocol.ServeConfig{MaxJobs: 2})
	first := h.evaluate("first")
	<-started
	h.clock.Advance(5 * time.Minute)
	h.tick()
	h.waitBuild(first, "arm", db.BuildFailed)

	second := h.evaluate("second")
	want := "waiting for a worker with system aarch64-linux; fails at 2026-01-02T03:14:05Z unless one connects"
	h.waitFor("arm of the second evaluation waiting", func() bool { return h.builds(second)["arm"].Waiting != "" })
	if b := h.builds(second)["arm"]; b.Status != db.BuildQueued || b.Waiting != want {
		t.Errorf("second evaluation's arm: %q, waiting %q; want queued, waiting %q", b.Status, b.Waiting, want)
	}

	h.clock.Advance(5 * time.Minute)
	h.tick()
	h.waitBuild(second, "arm", db.BuildFailed)
}

func TestRequeuedBuildShowsDeadline(t *testing.T) {
	res := graphResult(testDrv{name: "feat", features: []string{"kvm"}})
	release := make(chan struct{})
	defer close(release)
	started := make(chan string, 8)
	workers, _ := blockingWorkers(res, release, started, "w1")
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute, WorkerLease: time.Hour})
	h.connect("w0", workers["w1"], protocol.ServeConfig{Capabilities: []protocol.Capability{protocol.CapEval}})
	var cut protocol.Conn
	h.connect("w1", workers["w1"], protocol.ServeConfig{Features: []string{"kvm"}}, func(c protocol.Conn) protocol.Conn {
		cut = c
		return c
	})
	id := h.evaluate("requeued")
	h.waitBuild(id, "feat", db.BuildBuilding)
	<-started

	h.clock.Advance(time.Minute)
	cut.Close(websocket.StatusNormalClosure, "worker stopping")
	b := h.waitBuild(id, "feat", db.BuildQueued)
	if b.WorkerID != "" {
		t.Errorf("requeued feat: worker_id %q, want empty", b.WorkerID)
	}
	w := h.waits(id)["feat"]
	if b.Placement == nil {
		t.Fatal("requeued feat has no placement, want its job on w1")
	}
	want := "waiting for a worker with system x86_64-linux and features kvm; fails at 2026-01-02T03:10:05Z unless one connects; its last job, " +
		b.Placement.JobID + " on worker w1, ended without building it"
	if w.Reason != string(scheduler.NoWorker) || w.Text != want {
		t.Errorf("requeued feat: waiting %q (%q), want %q (no-worker)", w.Text, w.Reason, want)
	}

	h.clock.Advance(5 * time.Minute)
	h.tick()
	b = h.waitBuild(id, "feat", db.BuildFailed)
	if b.Waiting != "" || b.WaitingReason != "" {
		t.Errorf("failed feat: waiting %q (%q), want none", b.Waiting, b.WaitingReason)
	}
	if b.WorkerID != "" {
		t.Errorf("failed feat: worker_id %q, want empty: no worker failed it", b.WorkerID)
	}
	if b.Placement == nil || b.Placement.WorkerID != "w1" {
		t.Errorf("failed feat: placement %+v, want the job on w1", b.Placement)
	}
}

func TestWaitPostponedForPeer(t *testing.T) {
	res := graphResult(testDrv{name: "shared", system: "aarch64-linux"}, testDrv{name: "after", system: "aarch64-linux", inputs: []string{"shared"}})
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", instantWorker(res), protocol.ServeConfig{Capabilities: []protocol.Capability{protocol.CapEval}})
	id := h.evaluate("peer")
	h.waitStatus(id, db.EvalBuilding)
	h.waitFor("graph added", func() bool { return len(h.waits(id)) == 2 })

	eta := h.clock.Now().Add(time.Minute)
	h.run(func(ctx context.Context) {
		h.drv.apply(ctx, h.drv.sched.PeerBuilding(storePath("shared.drv"), eta, h.clock.Now()))
	})
	waits := h.waits(id)
	w := waits["shared"]
	if w.Reason != string(scheduler.PostponedForPeer) || !strings.HasPrefix(w.Text, "waiting for a mesh peer, which is building it; it is built here from ") || w.Until.IsZero() {
		t.Errorf("shared: waiting %q (%q, until %v), want postponed-for-peer with a time", w.Text, w.Reason, w.Until)
	}
	w = waits["after"]
	if w.For != storePath("shared.drv") || !strings.Contains(w.Text, "which is being built by a mesh peer") {
		t.Errorf("after: waiting %q for %q, want its input shared, built by a mesh peer", w.Text, w.For)
	}
}
