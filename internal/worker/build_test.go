package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/protocol"
)

// runNix runs a nix command for test setup that the worker itself never
// needs, such as filling a binary cache.
func runNix(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command("nix", append([]string{"--extra-experimental-features", "nix-command flakes"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix %q: %v: %s", args, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// TestBuildSubstitutesInputs builds the diamond's top in one store and
// copies its inputs into a signed file:// binary cache. A second store
// with that cache as its substituter then builds top again, and must fetch
// the inputs from the cache instead of building them.
func TestBuildSubstitutesInputs(t *testing.T) {
	requireNix(t)
	ctx := t.Context()
	flake := "path:" + testFlake(t)

	first := newTestWorker(t, chrootStore(t))
	result, attrs := evaluateAttrs(t, first, flake, "packages.*.top")
	if len(attrs) != 1 {
		t.Fatalf("Evaluate(top) attrs = %q, want one", attrs)
	}
	topDrv := result.EntryPoints[0].DrvPath
	if _, err := first.Build(ctx, protocol.BuildRequest{DrvPath: topDrv}, io.Discard, &narSink{}); err != nil {
		t.Fatalf("Build(top) in the first store = %v", err)
	}

	keyDir := t.TempDir()
	secretKey := filepath.Join(keyDir, "secret")
	if err := os.WriteFile(secretKey, []byte(runNix(t, "key", "generate-secret", "--key-name", "test-cache-1")), 0o600); err != nil {
		t.Fatal(err)
	}
	secretFile, err := os.Open(secretKey)
	if err != nil {
		t.Fatal(err)
	}
	defer secretFile.Close()
	cmd := exec.Command("nix", "--extra-experimental-features", "nix-command", "key", "convert-secret-to-public")
	cmd.Stdin = secretFile
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nix key convert-secret-to-public: %v", err)
	}
	publicKey := strings.TrimSpace(string(out))

	cacheDir := t.TempDir()
	var inputs []string
	for _, drv := range result.Derivations {
		if drv.DrvPath != topDrv {
			inputs = append(inputs, drv.Outputs["out"])
		}
	}
	runNix(t, append([]string{"--store", first.Nix().StoreDir(), "copy", "--to", "file://" + cacheDir + "?secret-key=" + secretKey}, inputs...)...)

	second, err := New(Config{
		StoreDir:          chrootStore(t),
		Substituters:      []string{"file://" + cacheDir},
		TrustedPublicKeys: []string{publicKey},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	evaluateAttrs(t, second, flake, "packages.*.top")
	var log bytes.Buffer
	built, err := second.Build(ctx, protocol.BuildRequest{DrvPath: topDrv}, &log, &narSink{})
	if err != nil {
		t.Fatalf("Build(top) in the second store = %v\nlog:\n%s", err, log.String())
	}
	if built.Outputs["out"].StorePath == "" {
		t.Errorf("Build(top).Outputs = %+v, want out", built.Outputs)
	}
	for _, name := range []string{"base", "left", "right"} {
		if strings.Contains(log.String(), "-"+name+".drv'...") {
			t.Errorf("second store built %s, want it substituted from the cache\nlog:\n%s", name, log.String())
		}
	}
	if !strings.Contains(log.String(), "copying path") {
		t.Errorf("second store log has no substitution\nlog:\n%s", log.String())
	}
}

// failingSink returns an error from PutNAR after reading a few bytes, like
// a cache that rejects an upload halfway.
type failingSink struct{}

var errRejected = errors.New("upload rejected by the test sink")

func (failingSink) HasPath(ctx context.Context, storePath string) (bool, error) { return false, nil }

func (failingSink) PutNAR(ctx context.Context, info protocol.PathInfo, nar io.Reader) error {
	if _, err := io.ReadFull(nar, make([]byte, 8)); err != nil {
		return err
	}
	return errRejected
}

func TestBuildUploadRejected(t *testing.T) {
	requireNix(t)
	w := newTestWorker(t, chrootStore(t))
	result, _ := evaluateAttrs(t, w, "path:"+testFlake(t), "packages.*.chain3")

	_, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: result.EntryPoints[0].DrvPath}, io.Discard, failingSink{})
	if !errors.Is(err, errRejected) {
		t.Errorf("Build() with a rejecting sink = %v, want errRejected", err)
	}
	if protocol.IsBuildError(err) {
		t.Errorf("Build() with a rejecting sink = %v, want no BuildError: the build succeeded", err)
	}
}

// toolFlake has an output that embeds an input source and the output of
// another derivation, so its runtime closure holds paths that are not its
// own outputs.
const toolFlake = `{
  outputs = { self }:
    let
      dep = builtins.derivation {
        name = "dep"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" "echo dep > $out" ];
      };
    in
    {
      packages.x86_64-linux.tool = builtins.derivation {
        name = "tool"; system = "x86_64-linux"; builder = "/bin/sh";
        script = ./script.sh;
        args = [ "-c" "echo \". $script # ${dep}\" > $out" ];
      };
    };
}
`

// TestBuildUploadsRuntimeClosure checks that Build uploads the input
// source and the dependency that its output refers to, each before the
// output, and that nix copies the output with its closure from a binary
// cache made of the uploaded NARs.
func TestBuildUploadsRuntimeClosure(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "flake.nix"), toolFlake)
	writeTestFile(t, filepath.Join(dir, "script.sh"), "echo hello from the script\n")

	w := newTestWorker(t, chrootStore(t))
	result, _ := evaluateAttrs(t, w, "path:"+dir, "packages.*.tool")
	sink := &narSink{}
	var log bytes.Buffer
	built, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: result.EntryPoints[0].DrvPath}, &log, sink)
	if err != nil {
		t.Fatalf("Build(tool) = %v\nlog:\n%s", err, log.String())
	}

	out := built.Outputs["out"]
	var refNames []string
	for _, ref := range out.References {
		refNames = append(refNames, storePathName(ref))
	}
	slices.Sort(refNames)
	if want := []string{"dep", "script.sh"}; !slices.Equal(refNames, want) {
		t.Fatalf("Build(tool) out references = %q, want %q", refNames, want)
	}
	var order []string
	for _, p := range sink.order {
		order = append(order, storePathName(p))
	}
	if len(order) != 3 || order[2] != "tool" {
		t.Errorf("upload order = %q, want dep and script.sh, then tool", order)
	}

	cache := writeBinaryCache(t, sink)
	other := chrootStore(t)
	runNix(t, "--store", other, "--option", "substituters", "", "copy", "--no-check-sigs", "--from", "file://"+cache, out.StorePath)
	got, err := os.ReadFile(filepath.Join(other, out.StorePath))
	if err != nil {
		t.Fatalf("read copied output: %v", err)
	}
	for _, ref := range out.References {
		if !strings.Contains(string(got), ref) {
			t.Errorf("copied output %q does not name %s", got, ref)
		}
		if _, err := os.Lstat(filepath.Join(other, ref)); err != nil {
			t.Errorf("copied closure lacks %s: %v", ref, err)
		}
	}
}

// TestBuildSkipsHeldReferences checks that Build uploads neither the
// paths that the sink holds nor, when it holds the output, anything else.
func TestBuildSkipsHeldReferences(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "flake.nix"), toolFlake)
	writeTestFile(t, filepath.Join(dir, "script.sh"), "echo hello from the script\n")

	w := newTestWorker(t, chrootStore(t))
	result, _ := evaluateAttrs(t, w, "path:"+dir, "packages.*.tool")
	drvPath := result.EntryPoints[0].DrvPath
	first := &narSink{}
	built, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: drvPath}, io.Discard, first)
	if err != nil {
		t.Fatalf("Build(tool) = %v", err)
	}

	// A sink that holds the dependency gets the source and the output.
	withDep := &narSink{}
	for _, p := range first.order {
		if storePathName(p) == "dep" {
			withDep.nars = map[string][]byte{p: first.nars[p]}
			withDep.infos = map[string]protocol.PathInfo{p: first.infos[p]}
		}
	}
	if _, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: drvPath}, io.Discard, withDep); err != nil {
		t.Fatalf("Build(tool) with dep held = %v", err)
	}
	var names []string
	for _, p := range withDep.order {
		names = append(names, storePathName(p))
	}
	if want := []string{"script.sh", "tool"}; !slices.Equal(names, want) {
		t.Errorf("uploads with dep held = %q, want %q", names, want)
	}

	// A sink that holds everything gets nothing.
	first.order = nil
	if _, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: drvPath}, io.Discard, first); err != nil {
		t.Fatalf("Build(tool) with all held = %v", err)
	}
	if len(first.order) != 0 {
		t.Errorf("uploads with everything held = %q, want none", first.order)
	}
	if built.Outputs["out"].StorePath == "" {
		t.Errorf("Build(tool).Outputs = %+v, want out", built.Outputs)
	}
}

// TestBuildRemovesGCRoots checks that nix does not warn about a missing
// --add-root and that no GC root is left after the upload.
func TestBuildRemovesGCRoots(t *testing.T) {
	requireNix(t)
	rootDir := t.TempDir()
	w, err := New(Config{StoreDir: chrootStore(t), GCRootDir: rootDir}, nil)
	if err != nil {
		t.Fatal(err)
	}
	result, _ := evaluateAttrs(t, w, "path:"+testFlake(t), "packages.*.multi")

	var log bytes.Buffer
	if _, err := w.Build(t.Context(), protocol.BuildRequest{DrvPath: result.EntryPoints[0].DrvPath}, &log, &narSink{}); err != nil {
		t.Fatalf("Build(multi) = %v\nlog:\n%s", err, log.String())
	}
	if strings.Contains(log.String(), "--add-root") {
		t.Errorf("Build(multi) log = %q, want no --add-root warning", log.String())
	}
	left, err := os.ReadDir(rootDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("GC root directory after Build(multi) holds %d entries, want none", len(left))
	}
}

// writeBinaryCache writes the sink's NARs as an uncompressed file://
// binary cache and returns its directory.
func writeBinaryCache(t *testing.T, sink *narSink) string {
	t.Helper()
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "nix-cache-info"), "StoreDir: /nix/store\n")
	if err := os.Mkdir(filepath.Join(dir, "nar"), 0o755); err != nil {
		t.Fatal(err)
	}
	for path, data := range sink.nars {
		info := sink.infos[path]
		hash := filepath.Base(path)[:32]
		narHash, err := nixhash.ParseAny(info.NarHash, nil)
		if err != nil {
			t.Fatalf("parse NarHash of %s: %v", path, err)
		}
		var refs []string
		for _, ref := range info.References {
			refs = append(refs, filepath.Base(ref))
		}
		var narinfo strings.Builder
		fmt.Fprintf(&narinfo, "StorePath: %s\nURL: nar/%s.nar\nCompression: none\n", path, hash)
		fmt.Fprintf(&narinfo, "NarHash: %s\nNarSize: %d\n", narHash.Format(nixhash.NixBase32, true), info.NarSize)
		fmt.Fprintf(&narinfo, "References: %s\n", strings.Join(refs, " "))
		if info.Deriver != "" {
			fmt.Fprintf(&narinfo, "Deriver: %s\n", filepath.Base(info.Deriver))
		}
		if info.CA != "" {
			fmt.Fprintf(&narinfo, "CA: %s\n", info.CA)
		}
		writeTestFile(t, filepath.Join(dir, hash+".narinfo"), narinfo.String())
		writeTestFile(t, filepath.Join(dir, "nar", hash+".nar"), string(data))
	}
	return dir
}

// storePathName returns the name part of a store path, after the hash.
func storePathName(path string) string {
	_, name, _ := strings.Cut(filepath.Base(path), "-")
	return name
}

func writeTestFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
