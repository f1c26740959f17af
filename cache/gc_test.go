package cache

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fixedRoots is a RootSource with a fixed answer.
type fixedRoots []string

func (r fixedRoots) RecentOutputs(ctx context.Context, n int) ([]string, error) {
	return r, nil
}

// putPath uploads a path of size bytes through PutNAR.
func putPath(t *testing.T, s *Store, hashPart, name string, size int, refs ...string) {
	t.Helper()

	narBytes := makeNAR(t, bytes.Repeat([]byte(hashPart[:1]), size))
	if err := s.PutNAR(context.Background(), pathInfoFor(hashPart, name, narBytes, refs...), bytes.NewReader(narBytes)); err != nil {
		t.Fatalf("PutNAR(%s): %v", name, err)
	}
}

func hashFor(i int) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

	return strings.Repeat(string(alphabet[i%32]), 31) + string(alphabet[(i/32)%32])
}

func TestGCEvictsLeastRecentlyUsed(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	s := newTestStore(t, func(cfg *Config) {
		cfg.Clock = clock
		cfg.Roots = fixedRoots{"/nix/store/" + hashFor(4) + "-root"}
	})
	ctx := context.Background()

	dep := "/nix/store/" + hashFor(1) + "-dep"
	putPath(t, s, hashFor(1), "dep", 10_000)
	putPath(t, s, hashFor(2), "user", 10_000, dep)
	putPath(t, s, hashFor(3), "glibc-2.40", 10_000)
	putPath(t, s, hashFor(4), "root", 10_000)
	putPath(t, s, hashFor(5), "fresh", 10_000)

	clock.Advance(time.Hour)

	if _, err := s.localNarInfo(ctx, hashFor(5)); err != nil {
		t.Fatal(err)
	}

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{MaxSize: ptr(int64(1)), Pins: &[]string{"glibc-*"}}); err != nil {
		t.Fatal(err)
	}

	dry, err := s.GC(ctx, GCOptions{DryRun: true})
	if err != nil {
		t.Fatalf("GC(dry run): %v", err)
	}

	if len(dry.Evicted) != 3 {
		t.Errorf("GC(dry run) evicted %q, want dep, user and fresh", dry.Evicted)
	}

	if has, _ := s.HasPath(ctx, dep); !has {
		t.Error("GC(dry run) removed a path")
	}

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{MaxSize: ptr(int64(dry.SizeBefore - 1))}); err != nil {
		t.Fatal(err)
	}

	report, err := s.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatalf("GC: %v", err)
	}

	// dep is the least recently used, and user goes with it because it
	// refers to dep; user is evicted first.
	want := []string{"/nix/store/" + hashFor(2) + "-user", dep}
	if !slices.Equal(report.Evicted, want) {
		t.Errorf("GC evicted %q, want %q", report.Evicted, want)
	}

	for i, wantHas := range map[int]bool{1: false, 2: false, 3: true, 4: true, 5: true} {
		has, err := s.HasPath(ctx, "/nix/store/"+hashFor(i)+"-x")
		if err != nil || has != wantHas {
			t.Errorf("HasPath(%s) after GC = %v, %v, want %v", hashFor(i), has, err, wantHas)
		}
	}

	if report.SizeAfter > report.MaxSize {
		t.Errorf("GC left %d bytes, want at most %d", report.SizeAfter, report.MaxSize)
	}

	assertEveryNarInfoHasNAR(t, s)
}

func TestGCKeepsPulledPathsThatUploadsNeed(t *testing.T) {
	u := newFakeUpstream(t)
	u.addPath(pullHashA, "pulled-dep", bytes.Repeat([]byte("d"), 5000))
	u.addPath(pullHashB, "pulled-alone", bytes.Repeat([]byte("a"), 5000))
	s, srv := newPullStore(t, u, nil)
	ctx := context.Background()

	for _, hashPart := range []string{pullHashA, pullHashB} {
		_, body := get(t, srv.URL+"/"+hashPart+".narinfo")
		info, _ := parseNarInfoString(string(body))
		get(t, srv.URL+"/"+info.URL)
	}

	putPath(t, s, hashFor(7), "upload", 5000, "/nix/store/"+pullHashA+"-pulled-dep")

	state, err := s.loadGCState(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{MaxSize: ptr(state.totalSize() - 1)}); err != nil {
		t.Fatal(err)
	}

	report, err := s.GC(ctx, GCOptions{})
	if err != nil {
		t.Fatal(err)
	}

	if want := []string{"/nix/store/" + pullHashB + "-pulled-alone"}; !slices.Equal(report.Evicted, want) {
		t.Errorf("GC evicted %q, want only %q", report.Evicted, want)
	}

	assertEveryNarInfoHasNAR(t, s)
}

// assertEveryNarInfoHasNAR checks that each stored narinfo names a NAR
// file that exists or is waiting for its first download, and that every
// reference is stored.
func assertEveryNarInfoHasNAR(t *testing.T, s *Store) {
	t.Helper()

	state, err := s.loadGCState(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	for hashPart, p := range state.paths {
		_, statErr := os.Stat(filepath.Join(s.narDir, p.file))
		if statErr != nil && !state.pending[p.file] {
			t.Errorf("narinfo %s names %s, which is neither stored nor pending: %v", hashPart, p.file, statErr)
		}

		for _, ref := range p.refs {
			if state.paths[ref] == nil {
				t.Errorf("narinfo %s refers to %s, which is not stored", hashPart, ref)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestHandlerPriorityByClient(t *testing.T) {
	s := newTestStore(t, func(cfg *Config) {
		cfg.TrustedProxies = mustPrefixes(t, "10.0.0.1/32")
	})

	if _, err := s.UpdateSettings(context.Background(), SettingsUpdate{
		Priority: ptr(50), LANPriority: ptr(10), LANCIDRs: &[]string{"192.168.0.0/16", "fd00::/8"},
	}); err != nil {
		t.Fatal(err)
	}

	h := s.Handler(HandlerOptions{})

	tests := []struct {
		remote    string
		forwarded string
		want      string
	}{
		{remote: "192.168.1.7:5000", want: "Priority: 10"},
		{remote: "[fd00::1]:5000", want: "Priority: 10"},
		{remote: "203.0.113.9:5000", want: "Priority: 50"},
		{remote: "203.0.113.9:5000", forwarded: "192.168.1.7", want: "Priority: 50"},
		{remote: "10.0.0.1:5000", forwarded: "192.168.1.7", want: "Priority: 10"},
		{remote: "10.0.0.1:5000", forwarded: "192.168.1.7, 203.0.113.9", want: "Priority: 50"},
		{remote: "10.0.0.1:5000", forwarded: "203.0.113.9, 192.168.1.7", want: "Priority: 10"},
		{remote: "10.0.0.1:5000", forwarded: "garbage", want: "Priority: 50"},
	}

	for _, tt := range tests {
		req, _ := http.NewRequest(http.MethodGet, "/nix-cache-info", nil)
		req.RemoteAddr = tt.remote

		if tt.forwarded != "" {
			req.Header.Set("X-Forwarded-For", tt.forwarded)
		}

		rec := newRecorder()
		h.ServeHTTP(rec, req)

		if !strings.Contains(rec.body.String(), tt.want+"\n") {
			t.Errorf("nix-cache-info(%s, X-Forwarded-For %q) = %q, want %q", tt.remote, tt.forwarded, rec.body.String(), tt.want)
		}
	}
}

func TestSettingsPersistAndDefaultUpstream(t *testing.T) {
	db := openTestDB(t)
	dir := t.TempDir()
	ctx := context.Background()

	s, err := New(db, Config{Dir: dir, SecretKey: testSecretKey}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}

	got := s.Settings().Upstreams
	if len(got) != 1 || got[0].URL != DefaultUpstreamURL || got[0].PublicKeys[0] != DefaultUpstreamKey {
		t.Errorf("upstreams of a new cache = %+v, want %s", got, DefaultUpstreamURL)
	}

	if _, err := s.RemoveUpstream(ctx, DefaultUpstreamURL+"/"); err != nil {
		t.Fatalf("RemoveUpstream: %v", err)
	}

	if _, err := s.AddUpstream(ctx, Upstream{URL: "http://127.0.0.1:1/", PublicKeys: []string{testPublicKey}}); err != nil {
		t.Fatalf("AddUpstream: %v", err)
	}

	if _, err := s.AddUpstream(ctx, Upstream{URL: "ftp://x", PublicKeys: []string{testPublicKey}}); err == nil {
		t.Error("AddUpstream(ftp URL) = nil error, want an error")
	}

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{LANCIDRs: &[]string{"not-a-cidr"}}); err == nil {
		t.Error("UpdateSettings(invalid CIDR) = nil error, want an error")
	}

	s.Close()

	reopened, err := New(db, Config{Dir: dir, SecretKey: testSecretKey}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}

	defer reopened.Close()

	got = reopened.Settings().Upstreams
	if len(got) != 1 || got[0].URL != "http://127.0.0.1:1" || got[0].Priority != DefaultUpstreamPriority {
		t.Errorf("upstreams after reopening = %+v, want only http://127.0.0.1:1 with priority %d", got, DefaultUpstreamPriority)
	}
}

func mustPrefixes(t *testing.T, cidrs ...string) []netip.Prefix {
	t.Helper()

	var prefixes []netip.Prefix

	for _, cidr := range cidrs {
		prefixes = append(prefixes, netip.MustParsePrefix(cidr))
	}

	return prefixes
}

// recorder is a minimal http.ResponseWriter for handler calls without a
// server.
type recorder struct {
	header http.Header
	code   int
	body   bytes.Buffer
}

func newRecorder() *recorder { return &recorder{header: http.Header{}} }

func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }
func (r *recorder) WriteHeader(code int)        { r.code = code }
