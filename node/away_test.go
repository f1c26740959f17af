package node

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/web"
)

// blockingWorkers returns fake workers by ID whose builds wait until
// release is closed, and a function that counts the build calls each got.
// started receives a value when a build call starts.
func blockingWorkers(res protocol.EvalResult, release <-chan struct{}, started chan<- string, ids ...string) (map[string]*fakeWorker, func(id string) int) {
	var mu sync.Mutex
	calls := map[string]int{}
	workers := map[string]*fakeWorker{}
	for _, id := range ids {
		workers[id] = &fakeWorker{
			evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
			build: func(ctx context.Context, req protocol.BuildRequest, log io.Writer) (protocol.BuildResult, error) {
				mu.Lock()
				calls[id]++
				mu.Unlock()
				started <- id
				select {
				case <-release:
					return builtResult(req), nil
				case <-ctx.Done():
					return protocol.BuildResult{}, ctx.Err()
				}
			},
		}
	}
	return workers, func(id string) int {
		mu.Lock()
		defer mu.Unlock()
		return calls[id]
	}
}

// waitAway waits until the driver counts worker id as away.
func (h *harness) waitAway(id string) {
	h.t.Helper()
	h.waitFor(id+" away", func() bool {
		away := false
		h.run(func(context.Context) {
			l := h.drv.links[id]
			away = l != nil && l.isAway()
		})
		return away
	})
}

// TestDroppedWorkerKeepsItsJob cuts a worker's connection while it
// builds, with another worker idle. The worker reconnects within its
// lease and completes the job, and the idle worker gets no build.
func TestDroppedWorkerKeepsItsJob(t *testing.T) {
	res := graphResult(testDrv{name: "slow"})
	release := make(chan struct{})
	started := make(chan string, 8)
	workers, calls := blockingWorkers(res, release, started, "w1", "w2")
	h := newHarness(t, driverConfig{WorkerLease: time.Hour})

	var cut protocol.Conn
	cfg := protocol.ServeConfig{Detached: &protocol.DetachedBuilds{}}
	h.connect("w1", workers["w1"], cfg, func(c protocol.Conn) protocol.Conn {
		cut = c
		return c
	})
	id := h.evaluate("drop")
	h.waitBuild(id, "slow", db.BuildBuilding)
	if got := <-started; got != "w1" {
		t.Fatalf("the build started on %s, want w1", got)
	}
	h.connect("w2", workers["w2"], protocol.ServeConfig{})

	cut.Close(websocket.StatusGoingAway, "connection cut")
	h.waitAway("w1")
	if _, err := h.db.CreateWorker("w1", db.HashToken("token"), h.clock.Now()); err != nil {
		t.Fatal(err)
	}
	registry := &workerRegistry{db: h.db, hub: h.hub, now: h.clock.Now, away: h.drv.away.get}
	list, err := registry.List(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "w1" || list[0].State != web.WorkerAway || list[0].AwayUntil == nil || len(list[0].Systems) == 0 {
		t.Errorf("worker list while w1 is away = %+v, want w1 away with a deadline and its systems first", list)
	}
	h.connect("w1", workers["w1"], cfg)
	if list, err := registry.List(h.ctx); err != nil || list[0].State != web.WorkerConnected || list[0].AwayUntil != nil {
		t.Errorf("worker list after w1 reconnected = %+v, %v; want w1 connected", list, err)
	}
	if got := <-started; got != "w1" {
		t.Fatalf("after the reconnect the build was offered to %s, want w1", got)
	}
	close(release)

	h.waitStatus(id, db.EvalSucceeded)
	b := h.builds(id)["slow"]
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

// TestLostWorkerJobQueuedAgain checks that the job of a worker that
// stopped, or that stayed away past its lease, goes to another worker.
func TestLostWorkerJobQueuedAgain(t *testing.T) {
	// revoke revokes w1's token once the driver counts it as away.
	revoke := func(h *harness) {
		if _, err := h.db.CreateWorker("w1", db.HashToken("token"), h.clock.Now()); err != nil {
			h.t.Fatal(err)
		}
		h.waitAway("w1")
		registry := &workerRegistry{db: h.db, hub: h.hub, now: h.clock.Now, revoked: func(id string) { h.drv.workerRevoked(h.ctx, id) }}
		if err := registry.Revoke(h.ctx, "w1"); err != nil {
			h.t.Fatal(err)
		}
	}
	tests := []struct {
		name  string
		lease time.Duration
		code  websocket.StatusCode
		// after runs after the connection ended, when set.
		after func(h *harness)
	}{
		{"worker stopped", time.Hour, websocket.StatusNormalClosure, nil},
		{"lease expired", 50 * time.Millisecond, websocket.StatusGoingAway, nil},
		{"token revoked while away", time.Hour, websocket.StatusGoingAway, revoke},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := graphResult(testDrv{name: "slow"})
			release := make(chan struct{})
			started := make(chan string, 8)
			workers, calls := blockingWorkers(res, release, started, "w1", "w2")
			h := newHarness(t, driverConfig{WorkerLease: tt.lease})

			var cut protocol.Conn
			h.connect("w1", workers["w1"], protocol.ServeConfig{}, func(c protocol.Conn) protocol.Conn {
				cut = c
				return c
			})
			id := h.evaluate("lost")
			h.waitBuild(id, "slow", db.BuildBuilding)
			<-started
			h.connect("w2", workers["w2"], protocol.ServeConfig{})

			cut.Close(tt.code, "connection ended")
			if tt.after != nil {
				tt.after(h)
			}
			if got := <-started; got != "w2" {
				t.Fatalf("the build was offered again to %s, want w2", got)
			}
			close(release)

			h.waitStatus(id, db.EvalSucceeded)
			if b := h.builds(id)["slow"]; b.WorkerID != "w2" {
				t.Errorf("slow built by %q, want w2", b.WorkerID)
			}
			if n := calls("w1"); n != 1 {
				t.Errorf("w1 got %d build calls, want 1", n)
			}
		})
	}
}

// TestEvaluationMovesOffFaultyWorker checks that an evaluation whose
// worker cannot run nix goes to another worker, and fails with a reason
// that names nix when no worker can.
func TestEvaluationMovesOffFaultyWorker(t *testing.T) {
	res := graphResult(testDrv{name: "a"})
	broken := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) {
			return protocol.EvalResult{}, fmt.Errorf("run nix flake metadata: fork/exec /nonexistent/nix (%w)", protocol.ErrWorkerFault)
		},
		build: func(context.Context, protocol.BuildRequest, io.Writer) (protocol.BuildResult, error) {
			return protocol.BuildResult{}, fmt.Errorf("fork/exec /nonexistent/nix (%w)", protocol.ErrWorkerFault)
		},
	}

	t.Run("another worker evaluates", func(t *testing.T) {
		h := newHarness(t, driverConfig{})
		h.connect("w1", broken, protocol.ServeConfig{Capabilities: []protocol.Capability{protocol.CapEval}})
		h.connect("w2", instantWorker(res), protocol.ServeConfig{})
		id := h.evaluate("moves")
		if e := h.waitStatus(id, db.EvalSucceeded); e.Error != "" {
			t.Errorf("evaluation error = %q, want none", e.Error)
		}
	})

	t.Run("no worker can", func(t *testing.T) {
		h := newHarness(t, driverConfig{})
		h.connect("w1", broken, protocol.ServeConfig{})
		id := h.evaluate("fails")
		e := h.waitStatus(id, db.EvalFailed)
		if !strings.Contains(e.Error, "could not run nix") || !strings.Contains(e.Error, "/nonexistent/nix") {
			t.Errorf("evaluation error = %q, want it to say the workers could not run nix and why", e.Error)
		}
	})
}

// TestEvaluationReservesSlot checks that the scheduler counts a worker's
// slot as taken while the worker evaluates, and free again afterwards.
func TestEvaluationReservesSlot(t *testing.T) {
	res := graphResult(testDrv{name: "a"})
	started := make(chan struct{})
	release := make(chan struct{})
	w := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) {
			close(started)
			<-release
			return res, nil
		},
		build: func(_ context.Context, req protocol.BuildRequest, _ io.Writer) (protocol.BuildResult, error) {
			return builtResult(req), nil
		},
	}
	h := newHarness(t, driverConfig{})
	h.connect("w1", w, protocol.ServeConfig{})
	reserved := func() int {
		n := 0
		h.run(func(context.Context) { n = h.drv.reserved["w1"] })
		return n
	}

	id := h.evaluate("reserve")
	<-started
	h.waitFor("w1's slot reserved", func() bool { return reserved() == 1 })
	close(release)
	h.waitStatus(id, db.EvalSucceeded)
	if n := reserved(); n != 0 {
		t.Errorf("reserved slots of w1 after the evaluation = %d, want 0", n)
	}
}

// TestBuildMovesOffFaultyWorker checks that a build on a worker that
// cannot start nix goes to another worker. Without one it fails with the
// worker's error, also in an evaluation that the node ends itself
// because another build has no worker at all.
func TestBuildMovesOffFaultyWorker(t *testing.T) {
	res := graphResult(testDrv{name: "a"}, testDrv{name: "gpu", features: []string{"gpu"}})
	broken := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
		build: func(context.Context, protocol.BuildRequest, io.Writer) (protocol.BuildResult, error) {
			return protocol.BuildResult{}, fmt.Errorf("fork/exec /nonexistent/nix (%w)", protocol.ErrWorkerFault)
		},
	}

	t.Run("another worker builds", func(t *testing.T) {
		h := newHarness(t, driverConfig{UnsupportedTimeout: FailUnsupportedAtOnce})
		h.connect("w1", broken, protocol.ServeConfig{})
		id := h.evaluate("moves")
		h.waitFor("a to fail once on w1", func() bool {
			found := false
			h.run(func(context.Context) { found = h.drv.faults[storePath("a.drv")] != "" })
			return found
		})
		h.connect("w2", instantWorker(res), protocol.ServeConfig{Capabilities: []protocol.Capability{protocol.CapBuild}})
		h.waitStatus(id, db.EvalFailed)
		if b := h.builds(id)["a"]; b.Status != db.BuildSucceeded || b.WorkerID != "w2" {
			t.Errorf("a = %q on %q (error %q), want succeeded on w2", b.Status, b.WorkerID, b.Error)
		}
	})

	t.Run("no worker can", func(t *testing.T) {
		h := newHarness(t, driverConfig{UnsupportedTimeout: FailUnsupportedAtOnce, FaultRest: time.Millisecond})
		h.connect("w1", broken, protocol.ServeConfig{})
		id := h.evaluate("fails")
		h.waitStatus(id, db.EvalFailed)
		b := h.builds(id)["a"]
		if b.Status != db.BuildFailed || !strings.Contains(b.Error, "no job built it") || !strings.Contains(b.Error, "/nonexistent/nix") {
			t.Errorf("a = %q with error %q, want failed with the worker's error", b.Status, b.Error)
		}
	})
}

// TestRemovedWorkerBuildQueued checks that the build of a worker that
// stopped shows as queued again, with the reason, until another worker
// takes it.
func TestRemovedWorkerBuildQueued(t *testing.T) {
	res := graphResult(testDrv{name: "slow"})
	release := make(chan struct{})
	started := make(chan string, 8)
	workers, _ := blockingWorkers(res, release, started, "w1")
	h := newHarness(t, driverConfig{WorkerLease: time.Hour})

	var cut protocol.Conn
	h.connect("w1", workers["w1"], protocol.ServeConfig{}, func(c protocol.Conn) protocol.Conn {
		cut = c
		return c
	})
	id := h.evaluate("requeued")
	h.waitBuild(id, "slow", db.BuildBuilding)
	<-started
	cut.Close(websocket.StatusNormalClosure, "worker stopping")

	b := h.waitBuild(id, "slow", db.BuildQueued)
	if b.StartedAt != nil || !strings.Contains(b.Waiting, "worker w1 left") {
		t.Errorf("slow after w1 stopped: started %v, waiting %q; want no start time and the reason", b.StartedAt, b.Waiting)
	}
	close(release)
}
