package node

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
)

// outputsBuilt notifies nars, when it wants to know, that the outputs are
// built, as a real worker does before its upload.
func outputsBuilt(nars protocol.NARSink) {
	if n, ok := nars.(protocol.BuiltNotifier); ok {
		n.OutputsBuilt()
	}
}

// waitClosed fails the test unless ch is closed within a few seconds.
func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

// The second link of a chain starts on the worker while the first one's
// outputs still upload, even on a worker with one slot, and the first
// link is reported built only once its upload ended.
func TestChainLinkStartsDuringUpload(t *testing.T) {
	res := graphResult(testDrv{name: "link-1"}, testDrv{name: "link-2", inputs: []string{"link-1"}})
	uploadDone := make(chan struct{})
	secondStarted := make(chan struct{})
	w := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
		buildToSink: func(ctx context.Context, req protocol.BuildRequest, nars protocol.NARSink) (protocol.BuildResult, error) {
			outputsBuilt(nars)
			if req.DrvPath == storePath("link-2.drv") {
				close(secondStarted)
				return builtResult(req), nil
			}
			select {
			case <-uploadDone:
				return builtResult(req), nil
			case <-ctx.Done():
				return protocol.BuildResult{}, ctx.Err()
			}
		},
	}
	h := newHarness(t, driverConfig{})
	h.connect("w1", w, protocol.ServeConfig{MaxJobs: 1})
	id := h.evaluate("pipeline")

	waitClosed(t, secondStarted, "link-2 to start while link-1 uploads")
	// The driver records a start after it offered the build, so wait
	// for the record; the upload cannot end before uploadDone.
	if b := h.waitBuild(id, "link-1", db.BuildBuilding); b.FinishedAt != nil {
		t.Errorf("link-1 during its upload finished at %v, want not finished", b.FinishedAt)
	}

	close(uploadDone)
	h.waitStatus(id, db.EvalSucceeded)
	builds := h.builds(id)
	first, second := builds["link-1"], builds["link-2"]
	for name, b := range builds {
		if b.Status != db.BuildSucceeded || b.WorkerID != "w1" {
			t.Errorf("%s = %q on %q, want succeeded on w1", name, b.Status, b.WorkerID)
		}
	}
	if first.Placement == nil || second.Placement == nil || first.Placement.JobID != second.Placement.JobID {
		t.Errorf("placements = %+v and %+v, want one job", first.Placement, second.Placement)
	}
	if second.StartedAt == nil || first.FinishedAt == nil || second.StartedAt.After(*first.FinishedAt) {
		t.Errorf("link-2 started %v, link-1 finished %v, want link-2 started first", second.StartedAt, first.FinishedAt)
	}
	if first.FinishedAt.After(*second.FinishedAt) {
		t.Errorf("link-1 finished %v after link-2 %v, want results in chain order", first.FinishedAt, second.FinishedAt)
	}
}

// When the first link's upload fails after the second link started, the
// second one is stopped, and the job runs again.
func TestChainLinkStoppedWhenUploadFails(t *testing.T) {
	res := graphResult(testDrv{name: "link-1"}, testDrv{name: "link-2", inputs: []string{"link-1"}})
	secondStarted := make(chan struct{})
	secondStopped := make(chan struct{})
	retry := make(chan struct{})
	var mu sync.Mutex
	attempts := map[string]int{}
	w := &fakeWorker{
		evaluate: func(context.Context, protocol.EvalRequest) (protocol.EvalResult, error) { return res, nil },
		buildToSink: func(ctx context.Context, req protocol.BuildRequest, nars protocol.NARSink) (protocol.BuildResult, error) {
			mu.Lock()
			attempts[req.DrvPath]++
			first := attempts[req.DrvPath] == 1
			mu.Unlock()
			if req.DrvPath == storePath("link-1.drv") && !first {
				// The job runs again only once the test saw link-2
				// queued.
				select {
				case <-retry:
				case <-ctx.Done():
					return protocol.BuildResult{}, ctx.Err()
				}
			}
			outputsBuilt(nars)
			switch {
			case req.DrvPath == storePath("link-1.drv") && first:
				select {
				case <-secondStarted:
				case <-time.After(10 * time.Second):
				}
				return protocol.BuildResult{}, errors.New("upload of the outputs failed")
			case req.DrvPath == storePath("link-2.drv") && first:
				close(secondStarted)
				<-ctx.Done()
				close(secondStopped)
				return protocol.BuildResult{}, ctx.Err()
			}
			return builtResult(req), nil
		},
	}
	h := newHarness(t, driverConfig{})
	h.connect("w1", w, protocol.ServeConfig{MaxJobs: 1})
	id := h.evaluate("pipeline-fault")

	waitClosed(t, secondStopped, "link-2 to stop after link-1's upload failed")
	// Until the job runs again, link-2 is not recorded as building.
	var last db.Build
	defer func() {
		if t.Failed() {
			t.Logf("last record of link-2: %+v", last)
		}
	}()
	h.waitFor("link-2 queued again", func() bool {
		last = h.builds(id)["link-2"]
		return last.Status == db.BuildQueued && last.StartedAt == nil
	})
	close(retry)
	h.waitStatus(id, db.EvalSucceeded)
	for name, b := range h.builds(id) {
		if b.Status != db.BuildSucceeded {
			t.Errorf("%s = %q (error %q), want succeeded", name, b.Status, b.Error)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, name := range []string{"link-1", "link-2"} {
		if n := attempts[storePath(name+".drv")]; n != 2 {
			t.Errorf("%s was built %d times, want 2", name, n)
		}
	}
}

// An urgent parallel build gets its worker to itself, which the build's
// placement records, and a serial one does not.
func TestParallelBuildPlacementExclusive(t *testing.T) {
	res := graphResult(testDrv{name: "parallel", parallel: true})
	h := newHarness(t, driverConfig{})
	h.connect("w1", instantWorker(res), protocol.ServeConfig{MaxJobs: 2})
	id := h.evaluate("exclusive")
	h.waitStatus(id, db.EvalSucceeded)
	if p := h.builds(id)["parallel"].Placement; p == nil || !p.Exclusive || !p.Urgent {
		t.Errorf("placement of the parallel build = %+v, want urgent and exclusive", p)
	}

	res = graphResult(testDrv{name: "serial"})
	h2 := newHarness(t, driverConfig{})
	h2.connect("w1", instantWorker(res), protocol.ServeConfig{MaxJobs: 2})
	id = h2.evaluate("serial")
	h2.waitStatus(id, db.EvalSucceeded)
	if p := h2.builds(id)["serial"].Placement; p == nil || p.Exclusive {
		t.Errorf("placement of the serial build = %+v, want not exclusive", p)
	}
}
