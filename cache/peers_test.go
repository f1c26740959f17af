package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/protocol"
)

// fakePeers serves the paths in nars, or returns err, and records the
// paths the cache reports.
type fakePeers struct {
	err error
	// reader, when set, makes the reader of each NAR from its bytes.
	reader func(ctx context.Context, nar []byte) io.Reader
	nars   map[string]struct {
		info protocol.PathInfo
		nar  []byte
	}

	mu      sync.Mutex
	fetches int
	added   []string
	removed []string
}

func (p *fakePeers) FetchHashPart(ctx context.Context, hashPart string, sink protocol.NARSink) error {
	p.mu.Lock()
	p.fetches++
	p.mu.Unlock()

	if p.err != nil {
		return p.err
	}

	entry, ok := p.nars[hashPart]
	if !ok {
		return fmt.Errorf("fetch %q: %w", hashPart, ErrNotFound)
	}

	var r io.Reader = bytes.NewReader(entry.nar)
	if p.reader != nil {
		r = p.reader(ctx, entry.nar)
	}

	return sink.PutNAR(ctx, entry.info, r)
}

func (p *fakePeers) PathsAdded(storePaths ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.added = append(p.added, storePaths...)
}

func (p *fakePeers) PathsRemoved(storePaths ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()

	p.removed = append(p.removed, storePaths...)
}

func (p *fakePeers) add(t *testing.T, hashPart, name string, contents []byte) protocol.PathInfo {
	t.Helper()

	if p.nars == nil {
		p.nars = map[string]struct {
			info protocol.PathInfo
			nar  []byte
		}{}
	}

	nar := makeNAR(t, contents)
	info := pathInfoFor(hashPart, name, nar)
	p.nars[hashPart] = struct {
		info protocol.PathInfo
		nar  []byte
	}{info, nar}

	return info
}

func getStatus(t *testing.T, url string) (int, string) {
	t.Helper()

	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}

	return resp.StatusCode, string(body)
}

func requestCount(t *testing.T, s *Store, kind, result string) float64 {
	t.Helper()

	rows, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}

	for _, row := range rows {
		if row.Name == "gradient_cache_requests_total" && row.Labels["kind"] == kind && row.Labels["result"] == result {
			return row.Value
		}
	}

	return 0
}

func TestPeersServeMissBeforeUpstreams(t *testing.T) {
	u := newFakeUpstream(t)
	s, srv := newPullStore(t, u, nil)

	peers := &fakePeers{}
	info := peers.add(t, hashFor(1), "from-peer", []byte("peer"))
	s.SetPeers(peers)

	code, body := getStatus(t, srv.URL+"/"+hashFor(1)+".narinfo")
	if code != http.StatusOK {
		t.Fatalf("GET narinfo = %d %q, want 200", code, body)
	}

	ni, err := parseNarInfoString(body)
	if err != nil {
		t.Fatal(err)
	}

	if ni.StorePath != info.StorePath {
		t.Errorf("narinfo StorePath = %q, want %q", ni.StorePath, info.StorePath)
	}

	if got := u.getCount("/" + hashFor(1) + ".narinfo"); got != 0 {
		t.Errorf("upstream narinfo GETs = %d, want 0", got)
	}

	if got := requestCount(t, s, "narinfo", resultPeer); got != 1 {
		t.Errorf("narinfo requests with result peer = %v, want 1", got)
	}

	if code, _ := getStatus(t, srv.URL+"/"+ni.URL); code != http.StatusOK {
		t.Errorf("GET %s = %d, want 200", ni.URL, code)
	}

	if !slices.Equal(peers.added, []string{info.StorePath}) {
		t.Errorf("PathsAdded got %q, want %q", peers.added, info.StorePath)
	}
}

func TestPeersMissGoesToUpstreams(t *testing.T) {
	u := newFakeUpstream(t)
	s, srv := newPullStore(t, u, nil)
	s.SetPeers(&fakePeers{})

	u.addPath(hashFor(2), "upstream-only", []byte("up"))

	code, body := getStatus(t, srv.URL+"/"+hashFor(2)+".narinfo")
	if code != http.StatusOK {
		t.Fatalf("GET narinfo = %d %q, want 200 from the upstream", code, body)
	}

	if got := requestCount(t, s, "narinfo", resultPulled); got != 1 {
		t.Errorf("narinfo requests with result pulled = %v, want 1", got)
	}
}

func TestPeersAnswers(t *testing.T) {
	fault := errors.New("stream reset")

	tests := []struct {
		name     string
		peerErr  error
		upstream bool
		want     int
	}{
		{"miss everywhere", nil, true, http.StatusNotFound},
		{"miss without upstreams", nil, false, http.StatusNotFound},
		{"peer fault and upstream miss", fault, true, http.StatusBadGateway},
		{"peer fault without upstreams", fault, false, http.StatusBadGateway},
		{"peer timeout", context.DeadlineExceeded, false, http.StatusGatewayTimeout},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var s *Store

			srv := (*httptest.Server)(nil)
			if tc.upstream {
				s, srv = newPullStore(t, newFakeUpstream(t), nil)
			} else {
				s = newTestStore(t, nil)
				srv = httptest.NewServer(s.Handler(HandlerOptions{}))
				t.Cleanup(srv.Close)
			}

			s.SetPeers(&fakePeers{err: tc.peerErr})

			if code, body := getStatus(t, srv.URL+"/"+hashFor(3)+".narinfo"); code != tc.want {
				t.Errorf("GET narinfo = %d %q, want %d", code, body, tc.want)
			}
		})
	}
}

func TestPeersNotAskedForStoredPath(t *testing.T) {
	s := newTestStore(t, nil)
	putPath(t, s, hashFor(4), "stored", 100)

	peers := &fakePeers{}
	s.SetPeers(peers)

	srv := httptest.NewServer(s.Handler(HandlerOptions{}))
	t.Cleanup(srv.Close)

	if code, _ := getStatus(t, srv.URL+"/"+hashFor(4)+".narinfo"); code != http.StatusOK {
		t.Fatalf("GET narinfo = %d, want 200", code)
	}

	if peers.fetches != 0 {
		t.Errorf("peer fetches = %d, want 0", peers.fetches)
	}
}

func TestOpenNAR(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	putPath(t, s, hashFor(5), "open", 100)

	info, err := s.NarInfo(ctx, hashFor(5))
	if err != nil {
		t.Fatal(err)
	}

	f, size, err := s.OpenNAR(ctx, info.URL)
	if err != nil {
		t.Fatalf("OpenNAR(%q): %v", info.URL, err)
	}

	data, err := io.ReadAll(f)
	f.Close()

	if err != nil || int64(len(data)) != size || uint64(size) != info.FileSize {
		t.Errorf("OpenNAR(%q) read %d bytes, size %d, %v, want FileSize %d", info.URL, len(data), size, err, info.FileSize)
	}

	for _, url := range []string{
		"nar/" + hashFor(1) + hashFor(1)[:20] + ".nar.zst",
		"nar/../../etc/passwd",
		"nix-cache-info",
		"",
	} {
		if _, _, err := s.OpenNAR(ctx, url); !errors.Is(err, ErrNotFound) {
			t.Errorf("OpenNAR(%q) = %v, want ErrNotFound", url, err)
		}
	}
}

func TestStorePathsSkipsPendingPulls(t *testing.T) {
	u := newFakeUpstream(t)
	s, srv := newPullStore(t, u, nil)
	ctx := context.Background()

	putPath(t, s, hashFor(6), "uploaded", 100)
	u.addPath(hashFor(7), "pulled", []byte("pulled"))

	if code, _ := getStatus(t, srv.URL+"/"+hashFor(7)+".narinfo"); code != http.StatusOK {
		t.Fatalf("GET pulled narinfo = %d, want 200", code)
	}

	var got []string
	if err := s.StorePaths(ctx, func(p string) error { got = append(got, p); return nil }); err != nil {
		t.Fatal(err)
	}

	if want := []string{"/nix/store/" + hashFor(6) + "-uploaded"}; !slices.Equal(got, want) {
		t.Errorf("StorePaths = %q, want %q before the pulled NAR is downloaded", got, want)
	}
}

func TestGCReportsRemovedPaths(t *testing.T) {
	s := newTestStore(t, nil)
	ctx := context.Background()
	peers := &fakePeers{}
	s.SetPeers(peers)

	putPath(t, s, hashFor(8), "old", 1000)

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{MaxSize: ptr(int64(1))}); err != nil {
		t.Fatal(err)
	}

	if _, err := s.GC(ctx, GCOptions{}); err != nil {
		t.Fatal(err)
	}

	want := []string{"/nix/store/" + hashFor(8) + "-old"}
	if !slices.Equal(peers.removed, want) {
		t.Errorf("PathsRemoved got %q, want %q", peers.removed, want)
	}
}

// trickleReader returns nar in 64-byte pieces, each after a pause.
type trickleReader struct {
	nar   []byte
	pause time.Duration
}

func (r *trickleReader) Read(p []byte) (int, error) {
	if len(r.nar) == 0 {
		return 0, io.EOF
	}

	time.Sleep(r.pause)
	n := copy(p[:min(len(p), 64)], r.nar)
	r.nar = r.nar[n:]

	return n, nil
}

// stallReader returns the first half of nar, then blocks until ctx ends.
type stallReader struct {
	ctx  context.Context
	half []byte
}

func (r *stallReader) Read(p []byte) (int, error) {
	if len(r.half) > 0 {
		n := copy(p, r.half)
		r.half = r.half[n:]

		return n, nil
	}

	<-r.ctx.Done()

	return 0, r.ctx.Err()
}

// TestPeerTimeoutIsIdle checks that Config.PeerTimeout ends a peer fetch
// whose transfer stalls, but not one that takes longer while bytes flow.
func TestPeerTimeoutIsIdle(t *testing.T) {
	const timeout = 800 * time.Millisecond

	tests := []struct {
		name   string
		reader func(ctx context.Context, nar []byte) io.Reader
		want   int
	}{
		{"slow transfer", func(_ context.Context, nar []byte) io.Reader {
			// Each pause is an eighth of the timeout, so a loaded machine
			// does not stretch one past it, and the 64-byte pieces of the
			// NAR make the whole transfer longer than the timeout.
			pause := timeout / 8
			if pieces := time.Duration(len(nar)/64 + 1); pieces*pause <= timeout {
				panic("the test NAR is too small to outlast the timeout")
			}
			return &trickleReader{nar: nar, pause: pause}
		}, http.StatusOK},
		{"stalled transfer", func(ctx context.Context, nar []byte) io.Reader {
			return &stallReader{ctx: ctx, half: nar[:len(nar)/2]}
		}, http.StatusGatewayTimeout},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			s, srv := newPullStore(t, u, func(cfg *Config) { cfg.PeerTimeout = timeout })

			peers := &fakePeers{reader: tt.reader}
			peers.add(t, hashFor(1), "from-peer", bytes.Repeat([]byte("peer "), 200))
			s.SetPeers(peers)

			start := time.Now()
			code, body := getStatus(t, srv.URL+"/"+hashFor(1)+".narinfo")
			if code != tt.want {
				t.Errorf("GET narinfo after %v = %d %q, want %d", time.Since(start), code, body, tt.want)
			}
			if code != http.StatusOK && !strings.Contains(body, "mesh peers") {
				t.Errorf("error body %q does not name the mesh peers", body)
			}
		})
	}
}
