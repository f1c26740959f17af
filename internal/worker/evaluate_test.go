package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/internal/attrpath"
	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

func evaluateAttrs(t *testing.T, w *Worker, ref string, patterns ...string) (protocol.EvalResult, []string) {
	t.Helper()
	var progress bytes.Buffer
	result, err := w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: ref, EntryPoints: patterns}, &progress)
	if err != nil {
		t.Fatalf("Evaluate(%s, %q) = %v\nprogress:\n%s", ref, patterns, err, progress.String())
	}
	var attrs []string
	for _, ep := range result.EntryPoints {
		attrs = append(attrs, ep.Attr)
	}
	return result, attrs
}

func TestEvaluatePatterns(t *testing.T) {
	requireNix(t)
	w := newTestWorker(t, chrootStore(t))
	ref := "path:" + testFlake(t)

	tests := []struct {
		patterns []string
		want     []string
	}{
		{[]string{"checks.**"}, []string{"checks.x86_64-linux.direct", "checks.x86_64-linux.nested.deeper.leaf"}},
		{[]string{"**.leaf"}, []string{"checks.x86_64-linux.nested.deeper.leaf"}},
		{[]string{"checks.*.*"}, []string{"checks.x86_64-linux.direct"}},
		{[]string{"packages.x86_64-linux.top,packages.x86_64-linux.chain3"}, []string{"packages.x86_64-linux.chain3", "packages.x86_64-linux.top"}},
		{[]string{"packages.*.top", "packages.x86_64-linux.top"}, []string{"packages.x86_64-linux.top"}},
		{[]string{"apps.*.*"}, []string{"apps.*.*"}},
		{[]string{"notAPackage"}, []string{"notAPackage"}},
	}
	for _, tt := range tests {
		_, got := evaluateAttrs(t, w, ref, tt.patterns...)
		if !slices.Equal(got, tt.want) {
			t.Errorf("Evaluate(%q) attrs = %q, want %q", tt.patterns, got, tt.want)
		}
	}
}

// unmatchedFlake has values that entry point patterns can name but that
// are not derivations, and a check that fails to evaluate.
const unmatchedFlake = `{
  outputs = { self }: {
    packages.x86_64-linux = {
      hello = builtins.derivation {
        name = "hello"; system = "x86_64-linux"; builder = "/bin/sh";
        args = [ "-c" "echo hello > $out" ];
      };
      notadrv = 42;
      text = "a string";
      plain = { a = 1; };
    };
    checks.x86_64-linux.broken = throw "broken check";
    lib.answer = 42;
  };
}
`

func TestEvaluateUnmatchedPatterns(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	writeTestFile(t, filepath.Join(dir, "flake.nix"), unmatchedFlake)
	w := newTestWorker(t, chrootStore(t))
	ref := "path:" + dir

	// Each entry point is written "attr: error", or "attr" for one that
	// evaluated to a derivation.
	tests := []struct {
		patterns []string
		want     []string
	}{
		{[]string{"packages.x86_64-linux.nonexistent"}, []string{"packages.x86_64-linux.nonexistent: attribute not found"}},
		{[]string{"packages.x86_64-linux.notadrv"}, []string{"packages.x86_64-linux.notadrv: not a derivation (an integer)"}},
		{[]string{"packages.x86_64-linux.text"}, []string{"packages.x86_64-linux.text: not a derivation (a string)"}},
		{[]string{"packages.x86_64-linux.plain"}, []string{"packages.x86_64-linux.plain: not a derivation (an attribute set)"}},
		{[]string{"packages.x86_64-linux"}, []string{"packages.x86_64-linux: not a derivation (an attribute set)"}},
		{[]string{"packages.aarch64-linux.hello"}, []string{`packages.aarch64-linux.hello: attribute not found: packages has no attribute "aarch64-linux"`}},
		{[]string{"packges.x86_64-linux.hello"}, []string{`packges.x86_64-linux.hello: attribute not found: the flake has no output "packges"`}},
		{[]string{"packages.x86_64-linux.hello.out"}, []string{"packages.x86_64-linux.hello.out: attribute not found: packages.x86_64-linux.hello is a derivation, not an attribute set"}},
		{[]string{"packages.*.notadrv"}, []string{"packages.x86_64-linux.notadrv: not a derivation (an integer)"}},
		{[]string{"packages.*.nonexistent"}, []string{"packages.*.nonexistent: pattern packages.*.nonexistent matched no derivation"}},
		{[]string{"packges.*.*"}, []string{"packges.*.*: pattern packges.*.* matched no derivation"}},
		{[]string{"lib.*"}, []string{"lib.*: pattern lib.* matched no derivation"}},
		{[]string{"packages.**.notadrv"}, []string{"packages.**.notadrv: pattern packages.**.notadrv matched no derivation"}},
		{[]string{"packages.*.*"}, []string{"packages.x86_64-linux.hello"}},
		{[]string{"packages.x86_64-linux.hello"}, []string{"packages.x86_64-linux.hello"}},
		// An error under "**" is a progress line, and the failed check may
		// be where the pattern would have matched.
		{[]string{"checks.**.leaf"}, nil},
		{[]string{"**.notadrv"}, nil},
		// "**" matches the failed check itself, so its error counts.
		{[]string{"checks.**"}, []string{"checks.x86_64-linux.broken: broken check"}},
		// With a derivation matched, a pattern whose names before the
		// first wildcard are missing is no error, as checks.*.* is for a
		// flake without checks. A pattern that reaches into the outputs
		// and matches nothing still is.
		{[]string{"packages.*.*", "tests.*.*"}, []string{"packages.x86_64-linux.hello"}},
		{[]string{"packages.*.*", "packages.*.typo"}, []string{"packages.x86_64-linux.hello", "packages.*.typo: pattern packages.*.typo matched no derivation"}},
		{[]string{"packages.*.*", "lib.*"}, []string{"packages.x86_64-linux.hello", "lib.*: pattern lib.* matched no derivation"}},
	}
	for _, tt := range tests {
		for _, listOnly := range []bool{false, true} {
			var progress bytes.Buffer
			result, err := w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: ref, EntryPoints: tt.patterns, ListOnly: listOnly}, &progress)
			if err != nil {
				t.Fatalf("Evaluate(%q, list only %v) = %v\nprogress:\n%s", tt.patterns, listOnly, err, progress.String())
			}
			var got []string
			for _, ep := range result.EntryPoints {
				if ep.Error != "" {
					got = append(got, ep.Attr+": "+ep.Error)
				} else {
					got = append(got, ep.Attr)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("Evaluate(%q, list only %v) entry points = %q, want %q\nprogress:\n%s", tt.patterns, listOnly, got, tt.want, progress.String())
			}
		}
	}
}

func TestEvaluateChainOrder(t *testing.T) {
	requireNix(t)
	w := newTestWorker(t, chrootStore(t))
	result, _ := evaluateAttrs(t, w, "path:"+testFlake(t), "packages.*.chain3")

	var names []string
	for _, drv := range result.Derivations {
		names = append(names, drv.Name)
	}
	if want := []string{"chain1", "chain2", "chain3"}; !slices.Equal(names, want) {
		t.Errorf("Evaluate(chain3) derivations = %q, want %q", names, want)
	}
	if len(result.Derivations) == 3 && !slices.Equal(result.Derivations[1].InputDrvs, []string{result.Derivations[0].DrvPath}) {
		t.Errorf("chain2 inputs = %q, want [chain1]", result.Derivations[1].InputDrvs)
	}
}

func TestEvaluateQuotedNames(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	flake := `{ outputs = { self }: { packages.x86_64-linux."a.b" = builtins.derivation { name = "dotted"; system = "x86_64-linux"; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; }; packages.x86_64-linux."with\"quote" = throw "quoted broken"; }; }`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newTestWorker(t, chrootStore(t))
	result, attrs := evaluateAttrs(t, w, "path:"+dir, "packages.*.*")

	if want := []string{`packages.x86_64-linux."a.b"`, `packages.x86_64-linux."with\"quote"`}; !slices.Equal(attrs, want) {
		t.Fatalf("Evaluate() attrs = %q, want %q", attrs, want)
	}
	if result.EntryPoints[0].DrvPath == "" {
		t.Errorf("entry point %s has no drvPath: %q", attrs[0], result.EntryPoints[0].Error)
	}
	if got := result.EntryPoints[1].Error; got != "quoted broken" {
		t.Errorf("entry point %s error = %q, want %q", attrs[1], got, "quoted broken")
	}
}

func TestEvaluateBrokenOutputs(t *testing.T) {
	requireNix(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(`{ outputs = { self }: throw "no outputs today"; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newTestWorker(t, chrootStore(t))

	_, err := w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: "path:" + dir, EntryPoints: []string{"packages.*.*"}}, nil)
	var nixErr *nix.Error
	if !errors.As(err, &nixErr) || !strings.Contains(nixErr.Message, "no outputs today") {
		t.Errorf("Evaluate(broken outputs) = %v, want a *nix.Error with the throw message", err)
	}
}

func TestEvaluateUnlockedInput(t *testing.T) {
	requireNix(t)
	dep := t.TempDir()
	if err := os.WriteFile(filepath.Join(dep, "flake.nix"), []byte(`{ outputs = { self }: { }; }`), 0o644); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	flake := `{ inputs.dep.url = "path:` + dep + `"; outputs = { self, dep }: { }; }`
	if err := os.WriteFile(filepath.Join(dir, "flake.nix"), []byte(flake), 0o644); err != nil {
		t.Fatal(err)
	}
	w := newTestWorker(t, chrootStore(t))

	_, err := w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: "path:" + dir, EntryPoints: []string{"packages.*.*"}}, nil)
	if err == nil || !strings.Contains(err.Error(), "run 'nix flake lock'") {
		t.Errorf("Evaluate(input without flake.lock) = %v, want an error that says to run nix flake lock", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "flake.lock")); statErr == nil {
		t.Errorf("Evaluate wrote flake.lock into the source directory")
	}
}

func TestEvaluateGit(t *testing.T) {
	requireNix(t)
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("git is not on PATH")
	}
	dir := testFlake(t)
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=test", "-c", "user.email=test@example.org"}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %q: %v: %s", args, err, out)
		}
	}
	git("init", "-q")
	git("add", "flake.nix")
	git("commit", "-q", "-m", "init")

	w := newTestWorker(t, chrootStore(t))
	result, attrs := evaluateAttrs(t, w, "git+file://"+dir, "packages.*.top")
	if len(result.Flake.Revision) != 40 || !strings.Contains(result.Flake.LockedURL, "rev="+result.Flake.Revision) {
		t.Errorf("Evaluate(git).Flake = %+v, want a revision in the locked URL", result.Flake)
	}
	if !slices.Equal(attrs, []string{"packages.x86_64-linux.top"}) {
		t.Errorf("Evaluate(git) attrs = %q, want [packages.x86_64-linux.top]", attrs)
	}

	// A dirty tree cannot be locked; the worker evaluates its copy.
	f, err := os.OpenFile(filepath.Join(dir, "flake.nix"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("# dirty\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	dirty, attrs := evaluateAttrs(t, w, "git+file://"+dir, "packages.*.top")
	if dirty.Flake.Revision != "" {
		t.Errorf("Evaluate(dirty git).Flake.Revision = %q, want none", dirty.Flake.Revision)
	}
	if !slices.Equal(attrs, []string{"packages.x86_64-linux.top"}) || dirty.EntryPoints[0].DrvPath != result.EntryPoints[0].DrvPath {
		t.Errorf("Evaluate(dirty git) = %+v, want the same top derivation as the clean tree", dirty.EntryPoints)
	}
}

func TestEvaluateRejectsBadPatterns(t *testing.T) {
	w, err := New(Config{NixBinary: "/nonexistent/nix"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, patterns := range [][]string{nil, {"packages..x"}, {""}} {
		_, err := w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: "/srv", EntryPoints: patterns}, nil)
		if !errors.Is(err, ErrNoEntryPoints) && !errors.Is(err, attrpath.ErrInvalid) {
			t.Errorf("Evaluate(patterns %q) = %v, want ErrNoEntryPoints or attrpath.ErrInvalid", patterns, err)
		}
	}
}

// TestMissingNixIsWorkerFault checks that a job whose nix cannot start
// reports a fault of the worker, which the node runs elsewhere, rather
// than a failed evaluation or build.
func TestMissingNixIsWorkerFault(t *testing.T) {
	w, err := New(Config{NixBinary: "/nonexistent/nix"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.Evaluate(t.Context(), protocol.EvalRequest{FlakeRef: "path:/srv", EntryPoints: []string{"packages.*.*"}}, nil)
	if !errors.Is(err, protocol.ErrWorkerFault) {
		t.Errorf("Evaluate with a missing nix = %v, want ErrWorkerFault", err)
	}
	_, err = w.Build(t.Context(), protocol.BuildRequest{DrvPath: "/nix/store/00000000000000000000000000000000-x.drv"}, io.Discard, &narSink{})
	if !errors.Is(err, protocol.ErrWorkerFault) || protocol.IsBuildError(err) {
		t.Errorf("Build with a missing nix = %v, want ErrWorkerFault and no build error", err)
	}
}

func TestJobSlots(t *testing.T) {
	w, err := New(Config{NixBinary: "/nonexistent/nix", MaxJobs: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	release, err := w.acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer release()

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	_, err = w.Build(ctx, protocol.BuildRequest{DrvPath: "/nix/store/00000000000000000000000000000000-x.drv"}, io.Discard, &narSink{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Build() with all slots taken and a cancelled context = %v, want context.Canceled", err)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{MaxJobs: -1}, {StoreDir: "relative"}} {
		if _, err := New(cfg, nil); err == nil {
			t.Errorf("New(%+v) = nil error, want an error", cfg)
		}
	}
}
