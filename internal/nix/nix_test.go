package nix

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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

// newTestClient returns a Client on a fresh chroot store, sandboxed, with
// busybox as /bin/sh and /bin/sleep. Nix leaves the store read-only, so
// the cleanup makes it writable before t.TempDir removes it.
func newTestClient(t *testing.T) *Client {
	t.Helper()
	requireNix(t)
	store := filepath.Join(t.TempDir(), "store")
	t.Cleanup(func() {
		if out, err := exec.Command("chmod", "-R", "u+w", store).CombinedOutput(); err != nil {
			t.Logf("chmod -R u+w %s: %v: %s", store, err, out)
		}
	})
	c, err := New(Config{
		Binary:       "nix",
		StoreDir:     store,
		Sandbox:      true,
		SandboxPaths: []string{"/bin/sh=/bin/busybox", "/bin/sleep=/bin/busybox"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const testFlakeNix = `{
  outputs = { self }: let
    mk = name: script: builtins.derivation {
      inherit name; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" script ];
    };
  in {
    packages.x86_64-linux = rec {
      hello = mk "hello" "echo hello > $out";
      world = mk "world" "echo ${hello} world > $out";
      fail = mk "fail" "echo going to fail; exit 3";
      slow = mk "slow" "/bin/sleep 987654";
      throws = throw "broken on purpose";
    };
  };
}
`

// lockTestFlake writes the test flake and locks it.
func lockTestFlake(t *testing.T, c *Client) FlakeMetadata {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(testFlakeNix), 0o644); err != nil {
		t.Fatal(err)
	}
	meta, err := c.FlakeMetadata(t.Context(), "path:"+dir)
	if err != nil {
		t.Fatalf("FlakeMetadata(path:%s) = %v", dir, err)
	}
	return meta
}

func TestClientVersion(t *testing.T) {
	c := newTestClient(t)
	v, err := c.Version(t.Context())
	if err != nil {
		t.Fatalf("Version() = %v", err)
	}
	if v.Major != 2 || v.Raw == "" {
		t.Errorf("Version() = %+v, want a 2.x version", v)
	}
}

func TestClientEvalBuildDump(t *testing.T) {
	c := newTestClient(t)
	ctx := t.Context()
	meta := lockTestFlake(t, c)
	if !meta.Locked() {
		t.Fatalf("FlakeMetadata().LockedURL = %q, want a locked URL", meta.LockedURL)
	}

	names, err := c.AttrNames(ctx, meta.LockedURL, []string{"packages", "x86_64-linux"})
	if err != nil {
		t.Fatalf("AttrNames() = %v", err)
	}
	if got, want := strings.Join(names, " "), "fail hello slow throws world"; got != want {
		t.Errorf("AttrNames() = %q, want %q", got, want)
	}

	_, err = c.DrvPath(ctx, meta.LockedURL, []string{"packages", "x86_64-linux", "throws"})
	var nixErr *Error
	if !errors.As(err, &nixErr) || nixErr.Message != "broken on purpose" {
		t.Errorf("DrvPath(throws) = %v, want a *nix.Error with message %q", err, "broken on purpose")
	}

	drvPath, err := c.DrvPath(ctx, meta.LockedURL, []string{"packages", "x86_64-linux", "world"})
	if err != nil {
		t.Fatalf("DrvPath(world) = %v", err)
	}
	drv, err := c.ReadDerivation(drvPath)
	if err != nil {
		t.Fatalf("ReadDerivation(%s) = %v", drvPath, err)
	}
	if drv.Name != "world" || len(drv.InputDrvs) != 1 {
		t.Errorf("ReadDerivation(%s) = %+v, want world with one input", drvPath, drv)
	}

	var log bytes.Buffer
	paths, err := c.Realise(ctx, drvPath, "", &log)
	if err != nil {
		t.Fatalf("Realise(%s) = %v\n%s", drvPath, err, log.String())
	}
	if len(paths) != 1 || paths[0] != drv.Outputs["out"] {
		t.Errorf("Realise(%s) = %q, want [%s]", drvPath, paths, drv.Outputs["out"])
	}
	if !strings.Contains(log.String(), "building") {
		t.Errorf("Realise(%s) log = %q, want nix's building lines", drvPath, log.String())
	}

	infos, err := c.PathInfo(ctx, paths[0])
	if err != nil {
		t.Fatalf("PathInfo(%s) = %v", paths[0], err)
	}
	if len(infos) != 1 || len(infos[0].References) != 1 || infos[0].Deriver != drvPath {
		t.Errorf("PathInfo(%s) = %+v, want one reference and deriver %s", paths[0], infos, drvPath)
	}

	var nar bytes.Buffer
	if err := c.DumpPath(ctx, paths[0], &nar); err != nil {
		t.Fatalf("DumpPath(%s) = %v", paths[0], err)
	}
	sum := sha256.Sum256(nar.Bytes())
	if got := "sha256-" + base64.StdEncoding.EncodeToString(sum[:]); got != infos[0].NarHash {
		t.Errorf("DumpPath(%s) hashes to %s, want %s", paths[0], got, infos[0].NarHash)
	}
	if uint64(nar.Len()) != infos[0].NarSize {
		t.Errorf("DumpPath(%s) wrote %d bytes, want %d", paths[0], nar.Len(), infos[0].NarSize)
	}

	_, err = c.PathInfo(ctx, "/nix/store/00000000000000000000000000000000-missing")
	if !errors.Is(err, ErrInvalidPath) {
		t.Errorf("PathInfo(missing) = %v, want ErrInvalidPath", err)
	}
}

func TestClientRealiseFails(t *testing.T) {
	c := newTestClient(t)
	ctx := t.Context()
	meta := lockTestFlake(t, c)
	drvPath, err := c.DrvPath(ctx, meta.LockedURL, []string{"packages", "x86_64-linux", "fail"})
	if err != nil {
		t.Fatalf("DrvPath(fail) = %v", err)
	}

	var log bytes.Buffer
	_, err = c.Realise(ctx, drvPath, "", &log)
	if !BuildFailed(err) {
		t.Fatalf("Realise(fail) = %v, want a build failure", err)
	}
	var nixErr *Error
	if errors.As(err, &nixErr) && !strings.Contains(nixErr.Message, "failed with exit code 3") {
		t.Errorf("Realise(fail) message = %q, want the builder's exit code", nixErr.Message)
	}
	if !strings.Contains(log.String(), "going to fail") {
		t.Errorf("Realise(fail) log = %q, want the builder's output", log.String())
	}

	_, err = c.Realise(ctx, "/nix/store/00000000000000000000000000000000-missing.drv", "", nil)
	if err == nil || BuildFailed(err) {
		t.Errorf("Realise(missing .drv) = %v, want an error that is not a build failure", err)
	}
}

// TestClientRealiseCancel checks that cancelling the context kills nix and
// the builder it started.
func TestClientRealiseCancel(t *testing.T) {
	c := newTestClient(t)
	meta := lockTestFlake(t, c)
	drvPath, err := c.DrvPath(t.Context(), meta.LockedURL, []string{"packages", "x86_64-linux", "slow"})
	if err != nil {
		t.Fatalf("DrvPath(slow) = %v", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	logReader, logWriter, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer logReader.Close()
	done := make(chan error, 1)
	go func() {
		_, err := c.Realise(ctx, drvPath, "", logWriter)
		logWriter.Close()
		done <- err
	}()

	// Wait until nix prints that it is building, then until the builder runs.
	buf := make([]byte, 4096)
	var seen []byte
	for !bytes.Contains(seen, []byte("building")) {
		n, err := logReader.Read(buf)
		if err != nil {
			t.Fatalf("read build log: %v (log so far %q)", err, seen)
		}
		seen = append(seen, buf[:n]...)
	}
	waitFor(t, "the builder to start", func() bool { return builderRunning("987654") })

	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Realise(slow) after cancel = %v, want context.Canceled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Realise(slow) did not return within 30s of cancel")
	}
	waitFor(t, "the builder to exit", func() bool { return !builderRunning("987654") })
}

// builderRunning reports whether a process whose command line contains
// marker exists.
func builderRunning(marker string) bool {
	dirs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, file := range dirs {
		data, err := os.ReadFile(file)
		if err == nil && bytes.Contains(data, []byte(marker)) {
			return true
		}
	}
	return false
}

// waitFor polls cond every 50ms for up to 30s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after 30s waiting for %s", what)
		}
		<-ticker.C
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	bad := []Config{
		{},
		{Binary: "nix", StoreDir: "relative/store"},
		{Binary: "nix", Substituters: []string{"http://a b"}},
		{Binary: "nix", ExtraOptions: []Option{{Name: ""}}},
	}
	for _, cfg := range bad {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) = nil error, want an error", cfg)
		}
	}
}

// TestClientRealiseGCRoot checks that Realise with a GC root returns the
// store paths, not the symlinks that nix-store prints, and that nix does
// not warn about a missing --add-root. A garbage collection must keep the
// output while the root exists and delete it once the root is removed.
func TestClientRealiseGCRoot(t *testing.T) {
	c := newTestClient(t)
	ctx := t.Context()
	meta := lockTestFlake(t, c)
	drvPath, err := c.DrvPath(ctx, meta.LockedURL, []string{"packages", "x86_64-linux", "hello"})
	if err != nil {
		t.Fatalf("DrvPath(hello) = %v", err)
	}
	drv, err := c.ReadDerivation(drvPath)
	if err != nil {
		t.Fatal(err)
	}

	root := filepath.Join(t.TempDir(), "result")
	var log bytes.Buffer
	paths, err := c.Realise(ctx, drvPath, root, &log)
	if err != nil {
		t.Fatalf("Realise(hello, %s) = %v\n%s", root, err, log.String())
	}
	if len(paths) != 1 || paths[0] != drv.Outputs["out"] {
		t.Errorf("Realise(hello, %s) = %q, want [%s]", root, paths, drv.Outputs["out"])
	}
	if strings.Contains(log.String(), "--add-root") {
		t.Errorf("Realise(hello, %s) log = %q, want no --add-root warning", root, log.String())
	}
	if target, err := os.Readlink(root); err != nil || target != drv.Outputs["out"] {
		t.Errorf("GC root %s points to %q (%v), want %s", root, target, err, drv.Outputs["out"])
	}

	collect := func() {
		t.Helper()
		cmd := exec.Command("nix-store", "--store", c.StoreDir(), "--gc")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nix-store --gc: %v: %s", err, out)
		}
	}
	realOut := c.RealPath(drv.Outputs["out"])
	collect()
	if _, err := os.Lstat(realOut); err != nil {
		t.Errorf("after nix-store --gc with the root, output %s: %v, want it kept", drv.Outputs["out"], err)
	}

	if err := os.Remove(root); err != nil {
		t.Fatal(err)
	}
	collect()
	if _, err := os.Lstat(realOut); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("after nix-store --gc without the root, output %s: %v, want it deleted", drv.Outputs["out"], err)
	}
}

func TestClientRealiseRejectsRelativeRoot(t *testing.T) {
	c, err := New(Config{Binary: "/nonexistent/nix"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Realise(t.Context(), "/nix/store/00000000000000000000000000000000-x.drv", "relative/root", nil); err == nil {
		t.Error("Realise(relative GC root) = nil error, want an error")
	}
}

func TestClientClosureInfo(t *testing.T) {
	c := newTestClient(t)
	ctx := t.Context()
	meta := lockTestFlake(t, c)
	drvPath, err := c.DrvPath(ctx, meta.LockedURL, []string{"packages", "x86_64-linux", "world"})
	if err != nil {
		t.Fatalf("DrvPath(world) = %v", err)
	}
	paths, err := c.Realise(ctx, drvPath, "", nil)
	if err != nil {
		t.Fatalf("Realise(world) = %v", err)
	}

	infos, err := c.ClosureInfo(ctx, paths...)
	if err != nil {
		t.Fatalf("ClosureInfo(world) = %v", err)
	}
	var got []string
	for _, info := range infos {
		got = append(got, filepath.Base(info.StorePath)[33:])
	}
	if want := []string{"hello", "world"}; strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ClosureInfo(world) names = %q, want %q", got, want)
	}

	_, err = c.ClosureInfo(ctx, "/nix/store/00000000000000000000000000000000-missing")
	if !errors.Is(err, ErrInvalidPath) {
		t.Errorf("ClosureInfo(missing) = %v, want ErrInvalidPath", err)
	}
	if _, err := c.ClosureInfo(ctx, drvPath); err == nil {
		t.Errorf("ClosureInfo(%s) = nil error, want .drv rejected", drvPath)
	}
}

// TestSystemFeatures reads nix's system-features, which include the
// extra-system-features a client passes.
func TestSystemFeatures(t *testing.T) {
	requireNix(t)
	c, err := New(Config{Binary: "nix", ExtraOptions: []Option{{Name: "extra-system-features", Value: "gradient-test"}}})
	if err != nil {
		t.Fatal(err)
	}
	features, err := c.SystemFeatures(t.Context())
	if err != nil {
		t.Fatalf("SystemFeatures() = %v", err)
	}
	if !slices.Contains(features, "gradient-test") {
		t.Errorf("SystemFeatures() = %q, want gradient-test among them", features)
	}
}
