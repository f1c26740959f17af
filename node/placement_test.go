package node

import (
	"bytes"
	"context"
	"crypto/sha256"
	"math"
	"slices"
	"testing"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// holdingWorker is a fakeWorker whose store holds the paths in held, which
// it reports for the node's store queries.
type holdingWorker struct {
	*fakeWorker
	held []string
}

var _ protocol.PathHolder = (*holdingWorker)(nil)

func (w *holdingWorker) HavePaths(ctx context.Context, paths []string) ([]string, error) {
	var have []string
	for _, p := range paths {
		if slices.Contains(w.held, p) {
			have = append(have, p)
		}
	}
	return have, nil
}

// putCachedPath stores a NAR of one regular file of size bytes at
// storePath in the harness's cache and returns its NarSize.
func (h *harness) putCachedPath(storePath string, size int) uint64 {
	h.t.Helper()
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		h.t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(size)}); err != nil {
		h.t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte{'x'}, size)); err != nil {
		h.t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		h.t.Fatal(err)
	}

	sum := sha256.Sum256(buf.Bytes())
	info := protocol.PathInfo{
		StorePath: storePath,
		NarHash:   "sha256:" + nixbase32.EncodeToString(sum[:]),
		NarSize:   uint64(buf.Len()),
	}
	if err := h.drv.cache.PutNAR(h.ctx, info, bytes.NewReader(buf.Bytes())); err != nil {
		h.t.Fatal(err)
	}
	return info.NarSize
}

// bigInputGraph has "big", whose output the tests put in the cache, and
// "app", which depends on it.
var bigInputGraph = graphResult(
	testDrv{name: "big"},
	testDrv{name: "app", inputs: []string{"big"}},
)

// TestDependentPlacedWhereInputIs checks that a job goes to the worker
// whose store contains its input when the graph is added. Its stored
// placement names the other worker as the runner-up, whose total adds the
// time to fetch the input.
func TestDependentPlacedWhereInputIs(t *testing.T) {
	h := newHarness(t, driverConfig{})
	bigSize := h.putCachedPath(storePath("big"), 8<<20)

	// The worker that holds the input has the larger ID, so a placement
	// without store reports picks the other one on the tie.
	h.connect("a", instantWorker(bigInputGraph), protocol.ServeConfig{})
	h.connect("b", &holdingWorker{fakeWorker: instantWorker(bigInputGraph), held: []string{storePath("big")}}, protocol.ServeConfig{})

	id := h.evaluate("placement")
	h.waitStatus(id, db.EvalSucceeded)
	bs := h.builds(id)

	if got := bs["big"]; got.Status != db.BuildCached || got.OutputSize != bigSize {
		t.Errorf("big = %q with output size %d, want cached with %d", got.Status, got.OutputSize, bigSize)
	}
	p := bs["app"].Placement
	if p == nil {
		t.Fatal("app has no placement")
	}
	if p.WorkerID != "b" {
		t.Errorf("app placed on %q, want b, which holds its input", p.WorkerID)
	}
	if p.FetchBytes != 0 {
		t.Errorf("app fetch bytes = %d, want 0", p.FetchBytes)
	}
	if p.Candidates != 2 {
		t.Errorf("app candidates = %d, want 2", p.Candidates)
	}
	if p.RunnerUp != "a" {
		t.Errorf("app runner-up = %q, want a", p.RunnerUp)
	}
	wantFetch := float64(bigSize) / scheduler.DefaultFetchBandwidth
	if got := p.RunnerUpTotal - p.Total; math.Abs(got-wantFetch) > 1e-9 {
		t.Errorf("app runner-up total - total = %v s, want the input's fetch time %v s", got, wantFetch)
	}
}

// TestStoreQueryMissingNarSize checks that a store report adds up the
// NarSize of the queried paths that the worker lacks and the cache holds.
func TestStoreQueryMissingNarSize(t *testing.T) {
	h := newHarness(t, driverConfig{})
	bigSize := h.putCachedPath(storePath("big"), 1<<20)
	h.putCachedPath(storePath("small"), 1000)
	h.connect("w1", &holdingWorker{fakeWorker: instantWorker(bigInputGraph), held: []string{storePath("small")}}, protocol.ServeConfig{})

	var w *protocol.RemoteWorker
	h.run(func(context.Context) { w = h.drv.workers["w1"] })
	paths := []string{storePath("big"), storePath("small"), storePath("not-cached")}
	slices.Sort(paths)

	r, err := h.drv.queryStore(h.ctx, w, paths)
	if err != nil {
		t.Fatalf("queryStore = %v, want success", err)
	}
	if want := []string{storePath("small")}; !slices.Equal(r.have, want) {
		t.Errorf("queryStore have = %q, want %q", r.have, want)
	}
	if r.missingNarSize != bigSize {
		t.Errorf("queryStore missing NAR size = %d, want %d (big only: small is held, not-cached has no size)", r.missingNarSize, bigSize)
	}
}
