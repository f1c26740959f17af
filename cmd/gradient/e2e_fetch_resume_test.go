package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/gradient-ci/gradient/web"
)

// errProxyCut ends the body of the NAR response that narCutProxy cuts.
var errProxyCut = errors.New("connection cut by the test proxy")

// narCutProxy is an HTTP reverse proxy in front of a node, for a worker's
// --server. It forwards every request, WebSocket upgrades included. It
// aborts the first NAR response of at least minCutSize bytes after half of
// its body, so the client sees a connection closed before Content-Length.
// It records every GET of a nar/ path.
type narCutProxy struct {
	srv        *httptest.Server
	minCutSize int64

	// mu guards the fields below.
	mu sync.Mutex
	// cutPath is the URL path of the cut NAR, empty before the cut.
	cutPath  string
	requests []*narRequest
}

// narRequest is one GET of a nar/ path that went through the proxy.
type narRequest struct {
	path string
	// rangeHeader is the request's Range header, empty when it had none.
	rangeHeader   string
	status        int
	contentLength int64
	// sent counts the body bytes the proxy passed on to the client.
	sent int64
}

func startNARCutProxy(t *testing.T, target string, minCutSize int64) *narCutProxy {
	t.Helper()
	targetURL, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &narCutProxy{minCutSize: minCutSize}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(targetURL) },
		// The proxy must not add compression or an environment's proxy.
		Transport:      &http.Transport{Proxy: nil, DisableCompression: true},
		FlushInterval:  -1,
		ModifyResponse: p.modifyResponse,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	p.srv = httptest.NewUnstartedServer(rp)
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.Start()
	t.Cleanup(p.srv.Close)
	return p
}

func (p *narCutProxy) url() string { return p.srv.URL }

// modifyResponse records a NAR response and wraps its body so that the
// bytes passed on are counted, and cut when it is the first large one.
func (p *narCutProxy) modifyResponse(resp *http.Response) error {
	req := resp.Request
	if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/nar/") {
		return nil
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	record := &narRequest{
		path:          req.URL.Path,
		rangeHeader:   req.Header.Get("Range"),
		status:        resp.StatusCode,
		contentLength: resp.ContentLength,
	}
	p.requests = append(p.requests, record)

	limit := int64(-1)
	if p.cutPath == "" && resp.StatusCode == http.StatusOK && resp.ContentLength >= p.minCutSize {
		p.cutPath = req.URL.Path
		limit = resp.ContentLength / 2
	}
	resp.Body = &proxyBody{ReadCloser: resp.Body, proxy: p, record: record, remaining: limit}
	return nil
}

// proxyBody counts the bytes read from a NAR response and fails with
// errProxyCut once remaining reaches 0, unless remaining starts negative.
type proxyBody struct {
	io.ReadCloser
	proxy     *narCutProxy
	record    *narRequest
	remaining int64
}

func (b *proxyBody) Read(p []byte) (int, error) {
	if b.remaining == 0 {
		return 0, errProxyCut
	}
	if b.remaining > 0 && int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}

	n, err := b.ReadCloser.Read(p)
	if b.remaining > 0 {
		b.remaining -= int64(n)
	}

	b.proxy.mu.Lock()
	b.record.sent += int64(n)
	b.proxy.mu.Unlock()
	return n, err
}

// requestsFor returns copies of the recorded GETs of path, in order.
func (p *narCutProxy) requestsFor(path string) []narRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []narRequest
	for _, r := range p.requests {
		if r.path == path {
			out = append(out, *r)
		}
	}
	return out
}

func (p *narCutProxy) cutNARPath() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cutPath
}

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

	proxy := startNARCutProxy(t, n.url(), 1<<20)
	b := startWorker(t, n, "b", tokenB, "--server", proxy.url(), "--features", "gradient-resume")

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

	cutPath := proxy.cutNARPath()
	if cutPath == "" {
		t.Fatalf("no NAR of at least 1 MiB went through the proxy; worker b log:\n%s", b.logText())
	}
	requests := proxy.requestsFor(cutPath)
	t.Logf("requests for %s: %+v", cutPath, requests)
	size := requests[0].contentLength
	if requests[0].rangeHeader != "" || requests[0].status != http.StatusOK {
		t.Errorf("first GET of the NAR: Range %q, status %d; want no Range and 200", requests[0].rangeHeader, requests[0].status)
	}
	if len(requests) != 2 {
		t.Fatalf("the NAR was requested %d times, want the cut request and one resumed request", len(requests))
	}

	resumed := requests[1]
	from, ok := rangeStart(resumed.rangeHeader)
	if !ok || from <= 0 || from > requests[0].sent {
		t.Errorf("resumed GET has Range %q; want bytes=N- with 0 < N <= %d, the bytes sent before the cut",
			resumed.rangeHeader, requests[0].sent)
	}
	if resumed.status != http.StatusPartialContent || resumed.sent != size-from {
		t.Errorf("resumed GET: status %d with %d bytes; want 206 with the %d bytes from %d", resumed.status, resumed.sent, size-from, from)
	}
	if total := requests[0].sent + resumed.sent; total*2 >= size*3 {
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

// rangeStart returns N of a Range header "bytes=N-".
func rangeStart(header string) (int64, bool) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok {
		return 0, false
	}
	start, ok := strings.CutSuffix(spec, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(start, 10, 64)
	return n, err == nil
}
