package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gradient-ci/gradient/protocol"
)

// requireNix skips the test when nix is not installed, unless
// GRADIENT_REQUIRE_NIX=1 requires nix, as in CI.
func requireNix(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		if os.Getenv("GRADIENT_REQUIRE_NIX") == "1" {
			t.Fatalf("nix is not on PATH and GRADIENT_REQUIRE_NIX=1: %v", err)
		}
		t.Skip("nix is not on PATH")
	}
}

// chrootStore returns a fresh chroot store directory. Nix leaves the store
// read-only, so the cleanup makes it writable before t.TempDir removes it.
func chrootStore(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "store")
	t.Cleanup(func() {
		if out, err := exec.Command("chmod", "-R", "u+w", dir).CombinedOutput(); err != nil {
			t.Logf("chmod -R u+w %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// testFlake copies testdata/flake to a fresh directory and returns it.
func testFlake(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	data, err := os.ReadFile("testdata/flake/flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

func newTestWorker(t *testing.T, store string) *Worker {
	t.Helper()
	w, err := New(Config{StoreDir: store, MaxJobs: 2}, nil)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return w
}

// errMissingReference is wrapped by narSink.PutNAR for a path whose
// references the sink does not hold, as the node's cache rejects it.
var errMissingReference = errors.New("reference is not in the sink")

// narSink is a protocol.NARSink that keeps NARs in memory and checks them
// against the path info, as a real cache does: the NAR must match NarHash
// and NarSize, and every reference other than the path itself must be
// stored first.
type narSink struct {
	mu    sync.Mutex
	nars  map[string][]byte
	infos map[string]protocol.PathInfo
	// order lists the stored paths in upload order.
	order []string
}

func (s *narSink) HasPath(ctx context.Context, storePath string) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.nars[storePath]
	return ok, nil
}

func (s *narSink) PutNAR(ctx context.Context, info protocol.PathInfo, nar io.Reader) error {
	data, err := io.ReadAll(nar)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if got := "sha256-" + base64.StdEncoding.EncodeToString(sum[:]); got != info.NarHash {
		return fmt.Errorf("NAR of %s hashes to %s, want %s", info.StorePath, got, info.NarHash)
	}
	if uint64(len(data)) != info.NarSize {
		return fmt.Errorf("NAR of %s has %d bytes, want %d", info.StorePath, len(data), info.NarSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ref := range info.References {
		if _, ok := s.nars[ref]; !ok && ref != info.StorePath {
			return fmt.Errorf("put %s: %w: %s", info.StorePath, errMissingReference, ref)
		}
	}
	if s.nars == nil {
		s.nars = make(map[string][]byte)
		s.infos = make(map[string]protocol.PathInfo)
	}
	s.nars[info.StorePath] = data
	s.infos[info.StorePath] = info
	s.order = append(s.order, info.StorePath)
	return nil
}

func entryPointsByAttr(result protocol.EvalResult) map[string]protocol.EntryPoint {
	m := make(map[string]protocol.EntryPoint)
	for _, ep := range result.EntryPoints {
		m[ep.Attr] = ep
	}
	return m
}

func TestEvaluateAndBuild(t *testing.T) {
	requireNix(t)
	ctx := t.Context()
	w := newTestWorker(t, chrootStore(t))
	flake := testFlake(t)

	var progress bytes.Buffer
	result, err := w.Evaluate(ctx, protocol.EvalRequest{
		FlakeRef:    "path:" + flake,
		EntryPoints: []string{"packages.*.*", "checks.**"},
	}, &progress)
	if err != nil {
		t.Fatalf("Evaluate() = %v\nprogress:\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())

	if !strings.HasPrefix(result.Flake.LockedURL, "path:"+flake) || !strings.Contains(result.Flake.LockedURL, "narHash=") {
		t.Errorf("Flake.LockedURL = %q, want a path: URL with a narHash", result.Flake.LockedURL)
	}
	if !strings.HasPrefix(result.Flake.NarHash, "sha256-") {
		t.Errorf("Flake.NarHash = %q, want an SRI hash", result.Flake.NarHash)
	}

	var attrs []string
	for _, ep := range result.EntryPoints {
		attrs = append(attrs, ep.Attr)
	}
	wantAttrs := []string{
		"checks.x86_64-linux.direct",
		"checks.x86_64-linux.nested.deeper.leaf",
		"packages.x86_64-linux.chain3",
		"packages.x86_64-linux.fail",
		"packages.x86_64-linux.missing",
		"packages.x86_64-linux.multi",
		"packages.x86_64-linux.throws",
		"packages.x86_64-linux.top",
	}
	if !slices.Equal(attrs, wantAttrs) {
		t.Errorf("entry point attrs = %q, want %q", attrs, wantAttrs)
	}

	eps := entryPointsByAttr(result)
	if got := eps["packages.x86_64-linux.throws"].Error; !strings.Contains(got, "this attribute is broken on purpose") {
		t.Errorf("throws.Error = %q, want nix's throw message", got)
	}
	if got := eps["packages.x86_64-linux.missing"].Error; !strings.Contains(got, "attribute 'nothere' missing") {
		t.Errorf("missing.Error = %q, want nix's missing attribute message", got)
	}
	for _, attr := range []string{"packages.x86_64-linux.top", "packages.x86_64-linux.fail", "checks.x86_64-linux.nested.deeper.leaf"} {
		if ep := eps[attr]; ep.Error != "" || !strings.HasSuffix(ep.DrvPath, ".drv") {
			t.Errorf("entry point %s = %+v, want a drvPath and no error", attr, ep)
		}
	}

	// Every derivation appears once, after its inputs.
	position := make(map[string]int)
	for i, drv := range result.Derivations {
		if _, dup := position[drv.DrvPath]; dup {
			t.Errorf("derivation %s appears twice", drv.DrvPath)
		}
		position[drv.DrvPath] = i
	}
	for i, drv := range result.Derivations {
		for _, input := range drv.InputDrvs {
			if p, ok := position[input]; !ok || p >= i {
				t.Errorf("derivation %s at %d: input %s at %d, want it earlier", drv.Name, i, input, p)
			}
		}
	}
	var names []string
	for _, drv := range result.Derivations {
		names = append(names, drv.Name)
	}
	slices.Sort(names)
	wantNames := []string{"base", "chain1", "chain2", "chain3", "fail", "left", "multi", "right", "top"}
	if !slices.Equal(names, wantNames) {
		t.Errorf("derivation names = %q, want %q", names, wantNames)
	}

	// Build the diamond's top: nix builds base, left and right on the way.
	sink := &narSink{}
	var buildLog bytes.Buffer
	topDrv := eps["packages.x86_64-linux.top"].DrvPath
	built, err := w.Build(ctx, protocol.BuildRequest{DrvPath: topDrv}, &buildLog, sink)
	if err != nil {
		t.Fatalf("Build(top) = %v\nlog:\n%s", err, buildLog.String())
	}
	out, ok := built.Outputs["out"]
	if !ok || !strings.HasSuffix(out.StorePath, "-top") {
		t.Fatalf("Build(top).Outputs = %+v, want an out output ending in -top", built.Outputs)
	}
	if len(out.References) != 2 {
		t.Errorf("top references = %q, want left and right", out.References)
	}
	if out.Deriver != topDrv {
		t.Errorf("top deriver = %q, want %q", out.Deriver, topDrv)
	}
	if _, ok := sink.nars[out.StorePath]; !ok {
		t.Errorf("sink has no NAR for %s", out.StorePath)
	}

	// A second build finds the output in the sink and uploads nothing.
	sink.nars[out.StorePath] = []byte("marker")
	if _, err := w.Build(ctx, protocol.BuildRequest{DrvPath: topDrv}, io.Discard, sink); err != nil {
		t.Fatalf("second Build(top) = %v", err)
	}
	if got := string(sink.nars[out.StorePath]); got != "marker" {
		t.Errorf("second Build(top) uploaded the NAR again")
	}

	// Two outputs, the one referring to the other.
	multi, err := w.Build(ctx, protocol.BuildRequest{DrvPath: eps["packages.x86_64-linux.multi"].DrvPath}, io.Discard, sink)
	if err != nil {
		t.Fatalf("Build(multi) = %v", err)
	}
	if len(multi.Outputs) != 2 || multi.Outputs["dev"].StorePath == "" || multi.Outputs["out"].StorePath == "" {
		t.Errorf("Build(multi).Outputs = %+v, want out and dev", multi.Outputs)
	}

	// A failing builder gives a BuildError with nix's message.
	buildLog.Reset()
	_, err = w.Build(ctx, protocol.BuildRequest{DrvPath: eps["packages.x86_64-linux.fail"].DrvPath}, &buildLog, sink)
	var buildErr *protocol.BuildError
	if !errors.As(err, &buildErr) {
		t.Fatalf("Build(fail) = %v, want a *protocol.BuildError", err)
	}
	if !strings.Contains(buildErr.Message, "failed with exit code 1") {
		t.Errorf("Build(fail) message = %q, want nix's builder failure", buildErr.Message)
	}
	if !strings.Contains(buildLog.String(), "about to fail") {
		t.Errorf("Build(fail) log = %q, want the builder's output", buildLog.String())
	}
}
