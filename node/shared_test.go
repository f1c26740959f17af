package node

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
)

// Evaluations that share a derivation no worker can build all fail when
// the wait runs out, and the driver keeps running.
func TestSharedUnsupportedEvaluationsFail(t *testing.T) {
	h := newHarness(t, driverConfig{UnsupportedTimeout: 5 * time.Minute})
	h.connect("w1", instantWorker(unsupportedGraph), protocol.ServeConfig{})
	var ids []uint64
	for _, project := range []string{"one", "two", "three"} {
		id := h.evaluate(project)
		h.waitFor("native of "+project+" built or cached", func() bool { return h.builds(id)["native"].Status.Succeeded() })
		ids = append(ids, id)
	}

	h.clock.Advance(5 * time.Minute)
	h.tick()
	for _, id := range ids {
		h.waitStatus(id, db.EvalFailed)
		if b := h.builds(id)["arm"]; b.Status != db.BuildFailed {
			t.Errorf("evaluation %d: arm = %q, want failed", id, b.Status)
		}
	}
	h.run(func(context.Context) {
		if len(h.drv.active) != 0 {
			t.Errorf("driver has %d active evaluations, want 0", len(h.drv.active))
		}
	})
}

// An evaluation whose graph arrives after a shared derivation failed for
// another evaluation records that failure, not "no job built it".
func TestSharedFailureReachesLaterEvaluation(t *testing.T) {
	h := newHarness(t, driverConfig{})
	graph := graphResult(
		testDrv{name: "broken"},
		testDrv{name: "after-broken", inputs: []string{"broken"}},
		testDrv{name: "slow"},
	)
	release := make(chan struct{})
	h.connect("w1", &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return graph, nil },
		build: func(ctx context.Context, req protocol.BuildRequest, log io.Writer) (protocol.BuildResult, error) {
			switch {
			case strings.HasSuffix(req.DrvPath, "-broken.drv"):
				return protocol.BuildResult{}, &protocol.BuildError{DrvPath: req.DrvPath, Message: "builder failed with exit code 3"}
			case strings.HasSuffix(req.DrvPath, "-slow.drv"):
				select {
				case <-release:
				case <-ctx.Done():
					return protocol.BuildResult{}, ctx.Err()
				}
			}
			return builtResult(req), nil
		},
	}, protocol.ServeConfig{MaxJobs: 2})

	first := h.evaluate("first")
	h.waitBuild(first, "broken", db.BuildFailed)
	second := h.evaluate("second")
	h.waitBuild(second, "broken", db.BuildFailed)
	close(release)

	for _, id := range []uint64{first, second} {
		h.waitStatus(id, db.EvalFailed)
		bs := h.builds(id)
		if b := bs["broken"]; b.Error != "builder failed with exit code 3" {
			t.Errorf("evaluation %d: broken error = %q, want the builder's message", id, b.Error)
		}
		if b := bs["after-broken"]; b.Status != db.BuildDependencyFailed {
			t.Errorf("evaluation %d: after-broken = %q, want dependency_failed", id, b.Status)
		}
		if b := bs["slow"]; b.Status != db.BuildSucceeded {
			t.Errorf("evaluation %d: slow = %q, want succeeded", id, b.Status)
		}
	}
}
