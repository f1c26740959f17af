package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

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
