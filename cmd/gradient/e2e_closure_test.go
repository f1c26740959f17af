package main

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/web"
)

// TestOutputWithSourceReference builds an output that refers to a source
// file of the flake, which no derivation builds, and substitutes it from
// the node's cache into an empty store: the cache must hold the whole
// runtime closure, sources included.
func TestOutputWithSourceReference(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "worker-store"))

	flake := writeFlake(t, `{ outputs = { self }: {
	  packages.x86_64-linux.usesrc = builtins.derivation {
	    name = "usesrc"; system = "x86_64-linux"; builder = "/bin/sh";
	    script = ./script.sh;
	    args = [ "-c" "mkdir $out; echo $script > $out/script-path; . $script > $out/output" ];
	  };
	}; }`)
	dir := strings.TrimPrefix(flake, "path:")
	if err := os.WriteFile(filepath.Join(dir, "script.sh"), []byte("echo from the script\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	n.mustCLI("project", "create", "demo/usesrc", "--flake", flake, "--entry-points", "packages.*.*")
	if _, progress, code := n.cli("project", "evaluate", "demo/usesrc", "--wait"); code != 0 {
		t.Fatalf("evaluate --wait: exit %d\n%s", code, progress)
	}
	var show projectShow
	decodeJSON(t, n.mustCLI("project", "show", "demo/usesrc", "--json"), &show)
	if len(show.Builds) != 1 || show.Builds[0].Outputs["out"] == "" {
		t.Fatalf("builds = %+v, want one with an output", show.Builds)
	}
	out := show.Builds[0].Outputs["out"]

	var c web.Cache
	decodeJSON(t, n.mustCLI("cache", "show", "main", "--json"), &c)
	other := storeDir(t, "other-store")
	if _, err := tryNix(append(nixArgs(other), "--option", "trusted-public-keys", c.PublicKey,
		"copy", "--from", n.cacheURL(), out)...); err != nil {
		t.Fatalf("nix copy --from the cache: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(other, out, "output"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "from the script\n" {
		t.Errorf("output = %q, want %q", got, "from the script\n")
	}
	scriptPath, err := os.ReadFile(filepath.Join(other, out, "script-path"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(other, strings.TrimSpace(string(scriptPath)))); err != nil {
		t.Errorf("the referenced source %s is not in the other store: %v", strings.TrimSpace(string(scriptPath)), err)
	}
}
