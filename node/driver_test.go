package node

import (
	"context"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
)

// instantWorker evaluates to res and builds every derivation at once.
func instantWorker(res protocol.EvalResult) *fakeWorker {
	return &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
		build: func(ctx context.Context, req protocol.BuildRequest, log io.Writer) (protocol.BuildResult, error) {
			io.WriteString(log, "building "+req.DrvPath+"\n")
			return builtResult(req), nil
		},
	}
}

// unsupportedGraph has a build for x86_64-linux, one for aarch64-linux
// that needs kvm, and a dependent of the latter.
var unsupportedGraph = graphResult(
	testDrv{name: "native"},
	testDrv{name: "arm", system: "aarch64-linux", features: []string{"kvm"}},
	testDrv{name: "after-arm", system: "aarch64-linux", inputs: []string{"arm"}},
)

func TestUnsupportedBuildFailsAfterTimeout(t *testing.T) {
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", instantWorker(unsupportedGraph), protocol.ServeConfig{})
	id := h.evaluate("unsupported")
	h.waitBuild(id, "native", db.BuildSucceeded)

	h.clock.Advance(4 * time.Minute)
	h.tick()
	b := h.builds(id)["arm"]
	if b.Status != db.BuildQueued {
		t.Errorf("arm after 4 of 5 minutes: status = %q, want queued", b.Status)
	}
	if want := "waiting for a worker with system aarch64-linux and features kvm; fails at 2026-01-02T03:09:05Z unless one connects"; b.Waiting != want {
		t.Errorf("arm waiting = %q, want %q", b.Waiting, want)
	}

	h.clock.Advance(time.Minute)
	h.tick()
	e := h.waitStatus(id, db.EvalFailed)
	if e.FinishedAt == nil {
		t.Errorf("finished evaluation has no finished_at")
	}
	bs := h.builds(id)
	want := "no worker for system aarch64-linux with features [kvm]: connect a worker that has them, then evaluate again"
	if bs["arm"].Status != db.BuildFailed || bs["arm"].Error != want {
		t.Errorf("arm = %q with error %q, want failed with %q", bs["arm"].Status, bs["arm"].Error, want)
	}
	if bs["after-arm"].Status != db.BuildDependencyFailed || bs["after-arm"].FailedDependency != storePath("arm.drv") {
		t.Errorf("after-arm = %q, failed dependency %q, want dependency_failed on arm", bs["after-arm"].Status, bs["after-arm"].FailedDependency)
	}
	if bs["native"].Status != db.BuildSucceeded {
		t.Errorf("native = %q, want succeeded", bs["native"].Status)
	}

	// The scheduler no longer holds the evaluation.
	h.run(func(context.Context) {
		if _, ok := h.drv.sched.Status(storePath("arm.drv")); ok {
			t.Errorf("scheduler still holds arm after its evaluation finished")
		}
		if len(h.drv.active) != 0 {
			t.Errorf("driver has %d active evaluations, want 0", len(h.drv.active))
		}
	})
}

func TestUnsupportedBuildFailsAtOnce(t *testing.T) {
	h := newHarness(t, driverConfig{UnsupportedTimeout: FailUnsupportedAtOnce})
	h.connect("w1", instantWorker(unsupportedGraph), protocol.ServeConfig{})
	id := h.evaluate("unsupported")

	h.waitStatus(id, db.EvalFailed)
	bs := h.builds(id)
	if bs["arm"].Status != db.BuildFailed || !strings.HasPrefix(bs["arm"].Error, "no worker for system aarch64-linux") {
		t.Errorf("arm = %q with error %q, want failed for want of a worker", bs["arm"].Status, bs["arm"].Error)
	}
	if bs["after-arm"].Status != db.BuildDependencyFailed {
		t.Errorf("after-arm = %q, want dependency_failed", bs["after-arm"].Status)
	}
}

func TestUnsupportedClearedByJoiningWorker(t *testing.T) {
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", instantWorker(unsupportedGraph), protocol.ServeConfig{})
	id := h.evaluate("unsupported")
	h.waitBuild(id, "native", db.BuildSucceeded)

	h.clock.Advance(3 * time.Minute)
	h.tick()
	h.connect("arm", instantWorker(unsupportedGraph), protocol.ServeConfig{
		Capabilities: []protocol.Capability{protocol.CapBuild},
		Systems:      []string{"aarch64-linux"},
		Features:     []string{"kvm"},
	})
	h.waitStatus(id, db.EvalSucceeded)

	h.clock.Advance(10 * time.Minute)
	h.tick()
	for name, b := range h.builds(id) {
		if b.Status != db.BuildSucceeded {
			t.Errorf("%s = %q (error %q), want succeeded", name, b.Status, b.Error)
		}
	}
	if b := h.builds(id)["arm"]; b.WorkerID != "arm" || b.Waiting != "" {
		t.Errorf("arm built on %q, waiting %q, want the arm worker and no waiting reason", b.WorkerID, b.Waiting)
	}
}

func TestUnsupportedWithoutFeatures(t *testing.T) {
	got := unsupportedMessage("aarch64-linux", nil)
	want := "no worker for system aarch64-linux: connect a worker that has it, then evaluate again"
	if got != want {
		t.Errorf("unsupportedMessage(aarch64-linux, nil) = %q, want %q", got, want)
	}
}

// decliningConn is the worker's end of a connection that declines the
// first n job offers before the worker sees them, as a worker whose slots
// are busy does.
type decliningConn struct {
	protocol.Conn
	mu       sync.Mutex
	n        int
	declined int
}

func (c *decliningConn) Read(ctx context.Context) (protocol.Message, error) {
	for {
		m, err := c.Conn.Read(ctx)
		if err != nil {
			return m, err
		}
		offer, ok := m.(*protocol.JobOffer)
		c.mu.Lock()
		decline := ok && c.declined < c.n
		if decline {
			c.declined++
		}
		c.mu.Unlock()
		if !decline {
			return m, nil
		}
		if err := c.Conn.Write(ctx, &protocol.JobDecline{Job: offer.Job, Reason: "all 1 job slots are busy"}); err != nil {
			return nil, err
		}
	}
}

func (c *decliningConn) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.declined
}

func TestDeclinedJobsAreOfferedAgain(t *testing.T) {
	res := graphResult(testDrv{name: "a"}, testDrv{name: "b"}, testDrv{name: "c", inputs: []string{"a", "b"}})
	h := newHarness(t, driverConfig{})
	decliners := map[string]*decliningConn{}
	for _, id := range []string{"w1", "w2"} {
		h.connect(id, instantWorker(res), protocol.ServeConfig{}, func(c protocol.Conn) protocol.Conn {
			dc := &decliningConn{Conn: c, n: 3}
			decliners[id] = dc
			return dc
		})
	}

	id := h.evaluate("declines")
	e := h.waitStatus(id, db.EvalSucceeded)
	if e.Error != "" {
		t.Errorf("evaluation error = %q, want none", e.Error)
	}
	for name, b := range h.builds(id) {
		if b.Status != db.BuildSucceeded {
			t.Errorf("%s = %q (error %q), want succeeded", name, b.Status, b.Error)
		}
	}
	for id, dc := range decliners {
		if dc.count() != 3 {
			t.Errorf("worker %s declined %d offers, want 3", id, dc.count())
		}
	}
}

func TestChainLinkBuildingWhenStarted(t *testing.T) {
	res := graphResult(testDrv{name: "link-1"}, testDrv{name: "link-2", inputs: []string{"link-1"}})
	release := map[string]chan struct{}{storePath("link-1.drv"): make(chan struct{}), storePath("link-2.drv"): make(chan struct{})}
	w := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
		build: func(ctx context.Context, req protocol.BuildRequest, log io.Writer) (protocol.BuildResult, error) {
			<-release[req.DrvPath]
			return builtResult(req), nil
		},
	}
	h := newHarness(t, driverConfig{})
	h.connect("w1", w, protocol.ServeConfig{})
	id := h.evaluate("chain")

	first := h.waitBuild(id, "link-1", db.BuildBuilding)
	second := h.builds(id)["link-2"]
	if second.Status != db.BuildQueued || second.StartedAt != nil {
		t.Errorf("link-2 while link-1 builds = %q, started %v, want queued and not started", second.Status, second.StartedAt)
	}
	if first.Placement == nil || second.Placement == nil {
		t.Fatalf("placements = %+v and %+v, want both set at assignment", first.Placement, second.Placement)
	}
	if first.Placement.JobID != second.Placement.JobID || first.Placement.Links != 2 {
		t.Errorf("placements = %+v and %+v, want one job of 2 links", first.Placement, second.Placement)
	}
	if first.WorkerID != "w1" || first.StartedAt == nil {
		t.Errorf("link-1 worker %q started %v, want w1 and a start time", first.WorkerID, first.StartedAt)
	}

	close(release[storePath("link-1.drv")])
	second = h.waitBuild(id, "link-2", db.BuildBuilding)
	if second.WorkerID != "w1" || second.StartedAt == nil {
		t.Errorf("link-2 worker %q started %v, want w1 and a start time", second.WorkerID, second.StartedAt)
	}
	close(release[storePath("link-2.drv")])
	h.waitStatus(id, db.EvalSucceeded)
	if b := h.builds(id)["link-2"]; b.OutputSize != 1000 {
		t.Errorf("link-2 output size = %d, want the 1000 bytes the worker reported", b.OutputSize)
	}
}

func TestEvaluationWaitingReason(t *testing.T) {
	reason := "this node runs with --no-worker; connect one with 'gradient worker'"
	h := newHarness(t, driverConfig{NoEvalWorkerReason: reason})
	id := h.evaluate("waiting")

	want := "waiting for a worker that can evaluate: " + reason
	h.waitFor("evaluation waiting reason", func() bool { return h.evaluation(id).Waiting == want })
	if e := h.evaluation(id); e.Status != db.EvalQueued {
		t.Errorf("waiting evaluation status = %q, want queued", e.Status)
	}

	h.connect("w1", instantWorker(graphResult(testDrv{name: "a"})), protocol.ServeConfig{})
	e := h.waitStatus(id, db.EvalSucceeded)
	if e.Waiting != "" {
		t.Errorf("finished evaluation waiting = %q, want empty", e.Waiting)
	}
}

func TestHistorySurvivesRestart(t *testing.T) {
	h := newHarness(t, driverConfig{HistoryInterval: time.Minute})
	h.connect("w1", instantWorker(graphResult(testDrv{name: "hello-2.12"})), protocol.ServeConfig{})
	id := h.evaluate("history")
	h.waitStatus(id, db.EvalSucceeded)

	h.clock.Advance(time.Minute)
	h.tick()
	stored, err := h.db.BuildTimeEstimates()
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 1 || stored[0].PName != "hello" || stored[0].System != "x86_64-linux" || stored[0].Samples != 1 {
		t.Fatalf("stored estimates = %+v, want one for hello on x86_64-linux", stored)
	}

	again, err := newDriver(h.drv.log, h.db, h.drv.cache, h.logs, driverConfig{Now: h.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.sched.History(); len(got) != 1 || got[0].PName != "hello" {
		t.Errorf("history of a new driver = %+v, want the stored estimate", got)
	}
	if again.sched.Config().JobIDPrefix == h.drv.sched.Config().JobIDPrefix {
		t.Errorf("job ID prefix %q is the same for two starts a minute apart", again.sched.Config().JobIDPrefix)
	}
}
