package main

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/internal/narproxy"
	"github.com/gradient-ci/gradient/web"
)

// fetchResumeFlake has a 4 MB output that zstd cannot compress and a
// dependent that needs the "gradient-resume" system feature, which is not
// among nix's defaults. A worker started without --features cannot take
// the dependent, so it runs on a worker started with --features
// gradient-resume, which passes the feature on to nix and substitutes the
// 4 MB output from the node's cache.
const fetchResumeFlake = `{ outputs = { self }: let
  system = "x86_64-linux";
  big = builtins.derivation {
    name = "fetch-big"; inherit system; builder = "/bin/sh";
    args = [ "-c" "head -c 4000000 /dev/urandom > $out" ];
  };
  use = builtins.derivation {
    name = "fetch-use"; inherit system; builder = "/bin/sh";
    requiredSystemFeatures = [ "gradient-resume" ];
    args = [ "-c" "sha256sum < ${big} > $out" ];
  };
in { packages.${system} = { inherit big use; }; }; }`

// TestNARFetchResumesAfterCut has worker A build a 4 MB output, and then
// worker B, whose --server is a proxy, build a dependent of it. The proxy
// cuts the download of the NAR from the node's cache halfway. Nix on B
// retries with a Range request from the byte it has, the node sends 206
// with the rest, and nix checks the NarHash. The dependent reads the
// bytes that A built, so B did not fall back to building the output.
func TestNARFetchResumesAfterCut(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	tokenA := strings.TrimSpace(n.mustCLI("worker", "register", "a"))
	tokenB := strings.TrimSpace(n.mustCLI("worker", "register", "b"))
	startWorker(t, n, "a", tokenA)
	waitWorkers(t, n, "a")

	n.mustCLI("project", "create", "demo/fetch", "--flake", writeFlake(t, fetchResumeFlake))
	n.mustCLI("project", "evaluate", "demo/fetch")
	builtBig := func(show evalShow) bool {
		for _, b := range show.Builds {
			if b.Name == "fetch-big" && b.Status == "succeeded" {
				return true
			}
		}
		return false
	}
	if show := waitEvaluation(t, n, "demo/fetch", builtBig); !builtBig(show) {
		t.Fatalf("fetch-big was not built: evaluation %+v, builds %+v", show.Evaluation, show.Builds)
	}

	// The proxy cuts the first NAR of at least 1 MiB halfway.
	proxy := narproxy.Start(t, n.url(), narproxy.Config{MinSize: 1 << 20, CutAfter: func(size int64) int64 { return size / 2 }})
	b := startWorker(t, n, "b", tokenB, "--server", proxy.URL(), "--features", "gradient-resume")

	show := waitEvaluation(t, n, "demo/fetch", isFinal)
	byName := map[string]buildRecord{}
	for _, build := range show.Builds {
		byName[build.Name] = build
	}
	big, use := byName["fetch-big"], byName["fetch-use"]
	if show.Evaluation.Status != "succeeded" || big.Status != "succeeded" || use.Status != "succeeded" {
		t.Fatalf("evaluation = %+v, builds %+v; want both builds succeeded", show.Evaluation, show.Builds)
	}
	if big.WorkerID != "a" || use.WorkerID != "b" {
		t.Errorf("fetch-big ran on %q and fetch-use on %q, want a and b", big.WorkerID, use.WorkerID)
	}

	cutPath := proxy.CutPath()
	if cutPath == "" {
		t.Fatalf("no NAR of at least 1 MiB went through the proxy; worker b log:\n%s", b.logText())
	}
	requests := proxy.RequestsFor(cutPath)
	t.Logf("requests for %s: %+v", cutPath, requests)
	size := requests[0].ContentLength
	if requests[0].Range != "" || requests[0].Status != http.StatusOK {
		t.Errorf("first GET of the NAR: Range %q, status %d; want no Range and 200", requests[0].Range, requests[0].Status)
	}
	if len(requests) != 2 {
		t.Fatalf("the NAR was requested %d times, want the cut request and one resumed request", len(requests))
	}

	resumed := requests[1]
	from, ok := resumed.RangeStart()
	if !ok || from <= 0 || from > requests[0].Sent {
		t.Errorf("resumed GET has Range %q; want bytes=N- with 0 < N <= %d, the bytes sent before the cut",
			resumed.Range, requests[0].Sent)
	}
	if resumed.Status != http.StatusPartialContent || resumed.Sent != size-from {
		t.Errorf("resumed GET: status %d with %d bytes; want 206 with the %d bytes from %d", resumed.Status, resumed.Sent, size-from, from)
	}
	if total := requests[0].Sent + resumed.Sent; total*2 >= size*3 {
		t.Errorf("the proxy sent %d bytes for the %d-byte NAR, want less than 1.5 times its size", total, size)
	}

	// Nix on B would build fetch-big itself if the substitution failed,
	// because the worker runs nix with fallback: the dependent's output
	// shows that it read the bytes A built.
	var c web.Cache
	decodeJSON(t, n.mustCLI("cache", "show", "main", "--json"), &c)
	check := storeDir(t, "check-store")
	bigPath, usePath := big.Outputs["out"], use.Outputs["out"]
	if _, err := tryNix(append(nixArgs(check), "--option", "trusted-public-keys", c.PublicKey,
		"copy", "--from", n.cacheURL(), bigPath, usePath)...); err != nil {
		t.Fatalf("nix copy --from the cache: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(check, bigPath))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	got, err := os.ReadFile(filepath.Join(check, usePath))
	if err != nil {
		t.Fatal(err)
	}
	if want := hex.EncodeToString(sum[:]); !strings.HasPrefix(string(got), want+" ") {
		t.Errorf("fetch-use read a file with sha256 %q, want %s, the output built on a", got, want)
	}
}
