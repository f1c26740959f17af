package cache

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/narproxy"
)

// rangeToEndCase is one line of testdata/range-to-end.txt.
type rangeToEndCase struct {
	header    string
	size      int64
	wantStart int64
	wantOK    bool
}

func loadRangeToEndCases(t testing.TB) []rangeToEndCase {
	t.Helper()

	const file = "testdata/range-to-end.txt"

	var cases []rangeToEndCase

	for i, line := range strings.Split(string(mustReadFile(t, file)), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		fields := strings.Split(line, " | ")
		if len(fields) != 3 {
			t.Fatalf("%s:%d: %d fields, want 3", file, i+1, len(fields))
		}

		header, err := strconv.Unquote(fields[0])
		if err != nil {
			t.Fatalf("%s:%d: header %s: %v", file, i+1, fields[0], err)
		}

		size, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil {
			t.Fatalf("%s:%d: size: %v", file, i+1, err)
		}

		c := rangeToEndCase{header: header, size: size}
		if fields[2] != "no" {
			c.wantOK = true
			if c.wantStart, err = strconv.ParseInt(fields[2], 10, 64); err != nil {
				t.Fatalf("%s:%d: start: %v", file, i+1, err)
			}
		}

		cases = append(cases, c)
	}

	return cases
}

func TestRangeToEnd(t *testing.T) {
	for _, c := range loadRangeToEndCases(t) {
		start, ok := rangeToEnd(c.header, c.size)
		if start != c.wantStart || ok != c.wantOK {
			t.Errorf("rangeToEnd(%q, %d) = %d, %v, want %d, %v", c.header, c.size, start, ok, c.wantStart, c.wantOK)
		}
	}
}

// FuzzRangeToEnd checks every range that rangeToEnd accepts against
// http.ServeContent, which serves the same file once it is downloaded:
// both must send 206 with the same Content-Range.
func FuzzRangeToEnd(f *testing.F) {
	for _, c := range loadRangeToEndCases(f) {
		f.Add(c.header, uint16(max(c.size, 0)))
	}

	f.Fuzz(func(t *testing.T, header string, size16 uint16) {
		size := int64(size16)

		start, ok := rangeToEnd(header, size)
		if !ok {
			return
		}

		if start < 0 || start >= size {
			t.Fatalf("rangeToEnd(%q, %d) = %d, true, want a start inside the file", header, size, start)
		}

		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Header.Set("Range", header)

		rec := httptest.NewRecorder()
		http.ServeContent(rec, req, "", time.Time{}, strings.NewReader(strings.Repeat("x", int(size))))

		want := "bytes " + strconv.FormatInt(start, 10) + "-" + strconv.FormatInt(size-1, 10) + "/" + strconv.FormatInt(size, 10)
		if got := rec.Header().Get("Content-Range"); rec.Code != http.StatusPartialContent || got != want {
			t.Errorf("rangeToEnd(%q, %d) = %d, but http.ServeContent sends %d with Content-Range %q, want 206 with %q",
				header, size, start, rec.Code, got, want)
		}
	})
}

// heldUpstream serves one NAR of about 1 MB through a fakeUpstream. It
// sends the upstream's Content-Length and the first firstPart bytes of
// the file, then holds the rest back until sendRest.
type heldUpstream struct {
	*fakeUpstream
	narBytes  []byte
	firstPart int
	release   chan struct{}
	once      sync.Once
	// contents is the regular file that the NAR serialises, at storePath.
	contents  []byte
	storePath string
}

func newHeldUpstream(t *testing.T, firstPart int) *heldUpstream {
	t.Helper()

	// Random bytes, so no layer on the way compresses them.
	contents := make([]byte, 1_000_000)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range contents {
		contents[i] = byte(rng.Uint32())
	}

	u := newFakeUpstream(t)
	info, narBytes := u.addPath(pullHashA, "held", contents)
	h := &heldUpstream{fakeUpstream: u, narBytes: narBytes, firstPart: firstPart, release: make(chan struct{}),
		contents: contents, storePath: info.StorePath}

	t.Cleanup(h.sendRest)

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.RequestURI() != "/"+info.URL || r.Method != http.MethodGet {
			return false
		}

		w.Header().Set("Content-Length", strconv.Itoa(len(narBytes)))
		w.Write(narBytes[:firstPart])
		http.NewResponseController(w).Flush()

		select {
		case <-h.release:
		case <-r.Context().Done():
			return true
		}

		w.Write(narBytes[firstPart:])

		return true
	})

	return h
}

// sendRest lets the upstream send the part of the file it holds back.
func (h *heldUpstream) sendRest() {
	h.once.Do(func() { close(h.release) })
}

// TestPullRangeWhileDownloading checks that a pulled NAR that is still
// downloading is sent with Accept-Ranges. A Range request that reaches the
// end of the file gets 206 and the bytes as they arrive, without waiting
// for the whole download.
func TestPullRangeWhileDownloading(t *testing.T) {
	const firstPart = 600_000

	u := newHeldUpstream(t, firstPart)
	_, srv := newPullStore(t, u.fakeUpstream, func(cfg *Config) { cfg.NARIdleTimeout = 30 * time.Second })

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, err := parseNarInfoString(string(body))
	if err != nil {
		t.Fatalf("parse pulled narinfo: %v", err)
	}

	narURL := srv.URL + "/" + local.URL
	size := len(u.narBytes)

	// HEAD before the download promises what the GETs below do.
	if resp, _ := do(t, http.MethodHead, narURL, nil, nil); resp.Header.Get("Accept-Ranges") != "bytes" {
		t.Errorf("HEAD pulled NAR before the download: Accept-Ranges = %q, want bytes", resp.Header.Get("Accept-Ranges"))
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// The first GET starts the download. It stops reading after 1000
	// bytes, as a client whose connection is cut would.
	first := openNAR(ctx, t, narURL, "")
	if first.StatusCode != http.StatusOK {
		t.Fatalf("GET pulled NAR while downloading = %d, want 200", first.StatusCode)
	}

	if got := first.Header.Get("Accept-Ranges"); got != "bytes" {
		t.Errorf("GET pulled NAR while downloading: Accept-Ranges = %q, want bytes", got)
	}

	if first.ContentLength != int64(size) {
		t.Errorf("GET pulled NAR while downloading: Content-Length = %d, want %d", first.ContentLength, size)
	}

	if _, err := io.ReadFull(first.Body, make([]byte, 1000)); err != nil {
		t.Fatalf("read the first 1000 bytes: %v", err)
	}

	first.Body.Close()

	// The upstream still holds the rest back, so the headers of this
	// response and its first bytes come from the growing file.
	const from = 1000

	resumed := openNAR(ctx, t, narURL, "bytes="+strconv.Itoa(from)+"-")
	defer resumed.Body.Close()

	if resumed.StatusCode != http.StatusPartialContent {
		t.Fatalf("GET bytes=%d- while downloading = %d, want 206", from, resumed.StatusCode)
	}

	if got, want := resumed.Header.Get("Content-Range"), "bytes 1000-"+strconv.Itoa(size-1)+"/"+strconv.Itoa(size); got != want {
		t.Errorf("GET bytes=%d- while downloading: Content-Range = %q, want %q", from, got, want)
	}

	if resumed.ContentLength != int64(size-from) {
		t.Errorf("GET bytes=%d- while downloading: Content-Length = %d, want %d", from, resumed.ContentLength, size-from)
	}

	if got := resumed.Header.Get("Accept-Ranges"); got != "bytes" {
		t.Errorf("GET bytes=%d- while downloading: Accept-Ranges = %q, want bytes", from, got)
	}

	early := make([]byte, firstPart-from-1)
	if _, err := io.ReadFull(resumed.Body, early); err != nil {
		t.Fatalf("read the downloaded part of the range before the upstream sent the rest: %v", err)
	}

	u.sendRest()

	rest, err := io.ReadAll(resumed.Body)
	if err != nil {
		t.Fatalf("read the rest of the range: %v", err)
	}

	if got := append(early, rest...); string(got) != string(u.narBytes[from:]) {
		t.Errorf("GET bytes=%d- while downloading sent %d bytes that differ from the NAR's %d from offset %d",
			from, len(got), size-from, from)
	}

	// Once the file is committed, a range that ends before the last byte
	// is served from it.
	resp, body := do(t, http.MethodGet, narURL, nil, http.Header{"Range": {"bytes=10-19"}})
	if resp.StatusCode != http.StatusPartialContent || string(body) != string(u.narBytes[10:20]) {
		t.Errorf("GET bytes=10-19 of the committed NAR = %d with %d bytes, want 206 with bytes 10 to 19", resp.StatusCode, len(body))
	}
}

// TestPullRangeBeforeEndWaits checks that a Range request that ends before
// the last byte of a pulled NAR waits for the download to be checked, so
// no client gets a complete response of bytes that fail the checks.
func TestPullRangeBeforeEndWaits(t *testing.T) {
	u := newHeldUpstream(t, 600_000)
	_, srv := newPullStore(t, u.fakeUpstream, func(cfg *Config) { cfg.NARIdleTimeout = 30 * time.Second })

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, err := parseNarInfoString(string(body))
	if err != nil {
		t.Fatalf("parse pulled narinfo: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	first := openNAR(ctx, t, srv.URL+"/"+local.URL, "")
	defer first.Body.Close()

	// The first response has the first part once the cache has it.
	if _, err := io.ReadFull(first.Body, make([]byte, u.firstPart-1)); err != nil {
		t.Fatalf("read the downloaded part: %v", err)
	}

	// The upstream holds the rest back until sendRest, so a request that
	// waits for the checks gets no response before its deadline.
	waitCtx, waitCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer waitCancel()

	req, _ := http.NewRequestWithContext(waitCtx, http.MethodGet, srv.URL+"/"+local.URL, nil)
	req.Header.Set("Range", "bytes=0-9")

	resp, err := http.DefaultClient.Do(req)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("GET bytes=0-9 while downloading = %d, want no response before the download ends", resp.StatusCode)
	}

	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("GET bytes=0-9 while downloading: %v, want the request's deadline", err)
	}

	u.sendRest()

	if _, err := io.Copy(io.Discard, first.Body); err != nil {
		t.Fatalf("read the rest of the NAR: %v", err)
	}

	resp, body = do(t, http.MethodGet, srv.URL+"/"+local.URL, nil, http.Header{"Range": {"bytes=0-9"}})
	if resp.StatusCode != http.StatusPartialContent || string(body) != string(u.narBytes[:10]) {
		t.Errorf("GET bytes=0-9 after the download = %d with %q, want 206 with the first 10 bytes", resp.StatusCode, body)
	}
}

// openNAR sends a GET with an optional Range header and returns the
// response with its body unread. The caller closes the body.
func openNAR(ctx context.Context, t *testing.T, url, rangeHeader string) *http.Response {
	t.Helper()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}

	if rangeHeader != "" {
		req.Header.Set("Range", rangeHeader)
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s with Range %q: %v", url, rangeHeader, err)
	}

	return resp
}

// TestNixResumesCutPulledNAR has the real nix client copy a path that the
// cache pulls from an upstream, through a proxy that cuts the cache's
// response while the upstream still holds back the end of the file. Nix
// resumes with a Range request, which the cache serves from the growing
// file, and the copy succeeds once the upstream sends the rest.
func TestNixResumesCutPulledNAR(t *testing.T) {
	env := requireNix(t)

	const firstPart, cutAt = 600_000, 300_000

	u := newHeldUpstream(t, firstPart)
	s, srv := newPullStore(t, u.fakeUpstream, func(cfg *Config) { cfg.NARIdleTimeout = 30 * time.Second })
	proxy := narproxy.Start(t, srv.URL, narproxy.Config{CutAfter: func(int64) int64 { return cutAt }})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dest := env.newStoreDir()

	type result struct {
		stderr string
		err    error
	}

	copied := make(chan result, 1)
	go func() {
		_, stderr, err := env.run(ctx, dest, "copy", "--option", "trusted-public-keys", s.PublicKey(),
			"--from", proxy.URL(), u.storePath)
		copied <- result{stderr, err}
	}()

	// The upstream sends the rest only after the resumed response has
	// started, so a cache that waited for the whole file would send no
	// response before waitFor times out.
	var early *result

	waitFor(t, "nix to resume the cut NAR download", func() bool {
		select {
		case r := <-copied:
			early = &r
			return true
		default:
		}

		for _, r := range proxy.Requests() {
			if r.Range != "" && r.Status == http.StatusPartialContent {
				return true
			}
		}

		return false
	})

	if early != nil {
		t.Fatalf("nix copy ended before it resumed the download: %v\n%s\nrequests: %+v", early.err, early.stderr, proxy.Requests())
	}

	u.sendRest()

	r := <-copied
	if r.err != nil {
		t.Fatalf("nix copy --from the cache: %v\n%s", r.err, r.stderr)
	}

	requests := proxy.Requests()
	t.Logf("NAR requests through the proxy: %+v", requests)

	if len(requests) != 2 {
		t.Fatalf("NAR requests through the proxy = %d, want the cut one and the resumed one", len(requests))
	}

	from, ok := requests[1].RangeStart()
	if !ok || from <= 0 || from > cutAt {
		t.Errorf("resumed request has Range %q, want bytes=N- with 0 < N <= %d", requests[1].Range, cutAt)
	}

	if total, size := requests[0].Sent+requests[1].Sent, int64(len(u.narBytes)); total*2 >= size*3 {
		t.Errorf("the proxy sent %d bytes for the %d-byte NAR, want less than 1.5 times its size", total, size)
	}

	got, err := os.ReadFile(filepath.Join(dest, u.storePath))
	if err != nil {
		t.Fatalf("read the copied path: %v", err)
	}

	if string(got) != string(u.contents) {
		t.Errorf("copied %s has %d bytes that differ from the upstream's %d", u.storePath, len(got), len(u.contents))
	}
}
