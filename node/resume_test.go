package node

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// seedBuilding returns a seed for newHarness: an evaluation of project,
// with the graph of res, whose build of each name in building was running
// on worker when the node stopped. It stores the evaluation's ID in id.
func seedBuilding(t *testing.T, project string, res protocol.EvalResult, worker string, id *uint64, building ...string) func(*db.DB) {
	return func(records *db.DB) {
		now := time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
		if _, err := records.CreateProject(db.Project{Org: "demo", Name: project, FlakeRef: "path:/src", EntryPoints: []string{"packages.*.*"}}, now); err != nil {
			t.Fatal(err)
		}
		e, err := records.CreateEvaluation("demo", project, now)
		if err != nil {
			t.Fatal(err)
		}
		var builds []db.Build
		for _, drv := range res.Derivations {
			b := db.Build{
				DrvPath:   drv.DrvPath,
				Name:      drv.Name,
				System:    drv.System,
				InputDrvs: drv.InputDrvs,
				Outputs:   drv.Outputs,
				Status:    db.BuildQueued,
				CreatedAt: now,
			}
			for _, name := range building {
				if name == drv.Name {
					b.Status = db.BuildBuilding
					b.WorkerID = worker
					b.StartedAt = &now
				}
			}
			builds = append(builds, b)
		}
		if err := records.CreateBuilds(e.ID, builds); err != nil {
			t.Fatal(err)
		}
		e.Flake = res.Flake
		e.Status = db.EvalBuilding
		if err := records.PutEvaluation(e); err != nil {
			t.Fatal(err)
		}
		*id = e.ID
	}
}

// reportDetached returns a connection wrapper that lists drvPaths in the
// worker's Hello.DetachedBuilds, as a worker whose builds went on after
// the node stopped does.
func reportDetached(drvPaths ...string) func(protocol.Conn) protocol.Conn {
	return func(c protocol.Conn) protocol.Conn { return &detachedReporter{Conn: c, drvPaths: drvPaths} }
}

type detachedReporter struct {
	protocol.Conn
	drvPaths []string
}

func (c *detachedReporter) Write(ctx context.Context, m protocol.Message) error {
	if h, ok := m.(*protocol.Hello); ok {
		h.DetachedBuilds = c.drvPaths
	}
	return c.Conn.Write(ctx, m)
}

// schedulerState returns the scheduler's state of a derivation.
func (h *harness) schedulerState(drvPath string) scheduler.State {
	h.t.Helper()
	var state scheduler.State
	h.run(func(context.Context) {
		st, _ := h.drv.sched.Status(drvPath)
		state = st.State
	})
	return state
}

// TestResumeHoldsBuildForItsWorker restarts the node while worker w1 was
// building a derivation. The idle worker w2 does not get the build. When
// w1 reconnects and reports the build, the node offers it to w1 again and
// uses its result.
func TestResumeHoldsBuildForItsWorker(t *testing.T) {
	res := graphResult(testDrv{name: "slow"})
	drvPath := res.Derivations[0].DrvPath
	release := make(chan struct{})
	started := make(chan string, 8)
	workers, calls := blockingWorkers(res, release, started, "w1", "w2")
	var id uint64
	h := newHarness(t, driverConfig{WorkerLease: 30 * time.Second}, seedBuilding(t, "held", res, "w1", &id, "slow"))

	h.connect("w2", workers["w2"], protocol.ServeConfig{})
	if got := h.schedulerState(drvPath); got != scheduler.StateHeld {
		t.Fatalf("with w2 idle, the derivation is %q, want %q", got, scheduler.StateHeld)
	}
	b := h.builds(id)["slow"]
	if b.Status != db.BuildBuilding || b.WorkerID != "w1" {
		t.Errorf("held build = %q on %q, want building on w1", b.Status, b.WorkerID)
	}
	if !strings.Contains(b.Waiting, "worker w1") {
		t.Errorf("held build waiting = %q, want it to name w1", b.Waiting)
	}

	h.connect("w1", workers["w1"], protocol.ServeConfig{}, reportDetached(drvPath))
	if got := <-started; got != "w1" {
		t.Fatalf("the build was offered to %s, want w1", got)
	}
	close(release)

	h.waitStatus(id, db.EvalSucceeded)
	b = h.builds(id)["slow"]
	if b.Status != db.BuildSucceeded {
		t.Errorf("slow = %q, want succeeded", b.Status)
	}
	if b.WorkerID != "w1" {
		t.Errorf("slow built by %q, want w1", b.WorkerID)
	}
	if n := calls("w2"); n != 0 {
		t.Errorf("w2 got %d build calls, want none", n)
	}
}

// TestResumeHoldExpires checks that a build held for a worker that does
// not come back within its lease is queued again and goes to another
// worker.
func TestResumeHoldExpires(t *testing.T) {
	res := graphResult(testDrv{name: "slow"})
	release := make(chan struct{})
	close(release)
	started := make(chan string, 8)
	workers, calls := blockingWorkers(res, release, started, "w2")
	var id uint64
	h := newHarness(t, driverConfig{WorkerLease: 30 * time.Second}, seedBuilding(t, "expires", res, "w1", &id, "slow"))

	// The driver handles the tick after it resumed, so the lease counts
	// from the time before the advance.
	h.tick()
	h.clock.Advance(29 * time.Second)
	h.tick()
	if b := h.builds(id)["slow"]; b.Status != db.BuildBuilding {
		t.Errorf("before the lease ended the build is %q, want building", b.Status)
	}
	h.clock.Advance(time.Second)
	h.tick()
	b := h.builds(id)["slow"]
	if b.Status != db.BuildQueued || b.WorkerID != "" {
		t.Errorf("after the lease ended the build is %q on %q, want queued on no worker", b.Status, b.WorkerID)
	}

	h.connect("w2", workers["w2"], protocol.ServeConfig{})
	h.waitStatus(id, db.EvalSucceeded)
	if b := h.builds(id)["slow"]; b.WorkerID != "w2" {
		t.Errorf("slow built by %q, want w2", b.WorkerID)
	}
	if n := calls("w2"); n != 1 {
		t.Errorf("w2 got %d build calls, want 1", n)
	}
}

// TestResumeReleasesUnreportedBuild checks that a build held for a worker
// that comes back without reporting it, such as a restarted worker
// process whose builds ended with the old one, goes to any worker at
// once.
func TestResumeReleasesUnreportedBuild(t *testing.T) {
	res := graphResult(testDrv{name: "slow"})
	release := make(chan struct{})
	close(release)
	started := make(chan string, 8)
	workers, calls := blockingWorkers(res, release, started, "w1", "w2")
	var id uint64
	h := newHarness(t, driverConfig{WorkerLease: time.Hour}, seedBuilding(t, "unreported", res, "w1", &id, "slow"))

	h.connect("w2", workers["w2"], protocol.ServeConfig{})
	h.connect("w1", workers["w1"], protocol.ServeConfig{}, reportDetached(storePath("other.drv")))
	h.waitStatus(id, db.EvalSucceeded)
	if b := h.builds(id)["slow"]; b.WorkerID != "w2" {
		t.Errorf("slow built by %q, want w2, the only worker when the hold ended", b.WorkerID)
	}
	if n := calls("w1"); n != 0 {
		t.Errorf("w1 got %d build calls, want none", n)
	}
}

// TestResumeHoldsNothing checks that without a lease, or for the
// in-process worker, a build that was running is queued again at once.
func TestResumeHoldsNothing(t *testing.T) {
	tests := []struct {
		name   string
		lease  time.Duration
		worker string
	}{
		{name: "no lease", worker: "w1"},
		{name: "in-process worker", lease: 30 * time.Second, worker: localWorkerID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res := graphResult(testDrv{name: "slow"})
			release := make(chan struct{})
			close(release)
			started := make(chan string, 8)
			workers, _ := blockingWorkers(res, release, started, "w2")
			var id uint64
			h := newHarness(t, driverConfig{WorkerLease: tc.lease}, seedBuilding(t, "nothing", res, tc.worker, &id, "slow"))

			if got := h.schedulerState(res.Derivations[0].DrvPath); got != scheduler.StateReady {
				t.Errorf("after the restart the derivation is %q, want %q", got, scheduler.StateReady)
			}
			if b := h.builds(id)["slow"]; b.Status != db.BuildQueued {
				t.Errorf("after the restart the build is %q, want queued", b.Status)
			}
			h.connect("w2", workers["w2"], protocol.ServeConfig{})
			h.waitStatus(id, db.EvalSucceeded)
		})
	}
}
