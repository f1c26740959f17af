package cache

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

const (
	pullHashA = "1b9p07z77phvv2hf6gm9f28syp39f1ag"
	pullHashB = "2c9p07z77phvv2hf6gm9f28syp39f1ag"
	pullHashC = "3d9p07z77phvv2hf6gm9f28syp39f1ag"
)

func TestPullNarInfoAndNAR(t *testing.T) {
	u := newFakeUpstream(t)
	depInfo, _ := u.addPath(pullHashB, "dep", []byte("dep\n"))
	topInfo, topNAR := u.addPath(pullHashA, "top", []byte("top\n"), pullHashB+"-dep", pullHashA+"-top")
	s, srv := newPullStore(t, u, nil)

	resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET narinfo = %d %q, want 200", resp.StatusCode, body)
	}

	info, err := parseNarInfoString(string(body))
	if err != nil {
		t.Fatalf("parse pulled narinfo: %v", err)
	}

	upstreamKey, _ := narinfo.ParsePublicKey(u.public)
	ownKey, _ := narinfo.ParsePublicKey(s.PublicKey())

	if err := narinfo.Verify(info, []narinfo.PublicKey{upstreamKey}); err != nil {
		t.Errorf("pulled narinfo lost the upstream's signature: %v", err)
	}

	if err := narinfo.Verify(info, []narinfo.PublicKey{ownKey}); err != nil {
		t.Errorf("pulled narinfo has no signature of the cache: %v", err)
	}

	if !narPathRe.MatchString(info.URL) {
		t.Errorf("pulled narinfo URL = %q, want a local nar/ file name", info.URL)
	}

	has, err := s.HasPath(context.Background(), depInfo.StorePath)
	if err != nil || !has {
		t.Errorf("HasPath(reference) after the pull = %v, %v, want true, nil", has, err)
	}

	resp, body = get(t, srv.URL+"/"+info.URL)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, topNAR) {
		t.Fatalf("GET pulled NAR = %d with %d bytes, want 200 with the %d bytes of the NAR", resp.StatusCode, len(body), len(topNAR))
	}

	if got := u.getCount("/" + topInfo.URL); got != 1 {
		t.Errorf("upstream GETs of %s = %d, want 1 with the query kept", topInfo.URL, got)
	}

	resp, body = get(t, srv.URL+"/"+pullHashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("second GET narinfo = %d, want 200", resp.StatusCode)
	}

	committed, err := parseNarInfoString(string(body))
	if err != nil || committed.FileHash == nil || committed.FileSize != uint64(len(topNAR)) {
		t.Errorf("narinfo after the download has FileHash %v and FileSize %d, want both set, FileSize %d (error %v)",
			committed.FileHash, committed.FileSize, len(topNAR), err)
	}

	if got := u.getCount("/" + pullHashA + ".narinfo"); got != 1 {
		t.Errorf("upstream GETs of the narinfo = %d, want 1", got)
	}

	resp, body = get(t, srv.URL+"/"+info.URL)
	if resp.StatusCode != http.StatusOK || !bytes.Equal(body, topNAR) {
		t.Errorf("GET committed NAR = %d with %d bytes, want 200 with %d bytes", resp.StatusCode, len(body), len(topNAR))
	}

	if got := u.getCount("/" + topInfo.URL); got != 1 {
		t.Errorf("upstream GETs of the NAR after a local hit = %d, want 1", got)
	}
}

func TestPullAnswers(t *testing.T) {
	tests := []struct {
		name     string
		change   func(u *fakeUpstream)
		wantCode int
	}{
		{name: "missing", change: func(u *fakeUpstream) {}, wantCode: http.StatusNotFound},
		{
			name: "wrong signature",
			change: func(u *fakeUpstream) {
				info, narBytes := u.addPath(pullHashA, "top", []byte("top\n"))
				other, _, _ := narinfo.GenerateKey("upstream-test-1")
				info.Signatures = nil
				narinfo.Sign(info, other)
				u.mu.Lock()
				u.files["/"+pullHashA+".narinfo"] = narinfo.Format(info)
				u.files["/"+info.URL] = narBytes
				u.mu.Unlock()
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name: "HTML page with status 200",
			change: func(u *fakeUpstream) {
				u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
					w.Header().Set("Content-Type", "text/html; charset=utf-8")
					io.WriteString(w, "<html><body>Sign in to the network</body></html>\n")
					return true
				})
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name: "HTML page as text/plain",
			change: func(u *fakeUpstream) {
				u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
					w.Header().Set("Content-Type", "text/plain")
					io.WriteString(w, "<html><body>Sign in to the network</body></html>\n")
					return true
				})
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name: "narinfo of another path",
			change: func(u *fakeUpstream) {
				info, _ := u.addPath(pullHashB, "other", []byte("other\n"))
				u.mu.Lock()
				u.files["/"+pullHashA+".narinfo"] = narinfo.Format(info)
				u.mu.Unlock()
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name: "reference missing upstream",
			change: func(u *fakeUpstream) {
				u.addPath(pullHashA, "top", []byte("top\n"), pullHashC+"-gone")
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name: "server error",
			change: func(u *fakeUpstream) {
				u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
					http.Error(w, "overloaded", http.StatusServiceUnavailable)
					return true
				})
			},
			wantCode: http.StatusBadGateway,
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			tt.change(u)
			s, srv := newPullStore(t, u, nil)

			resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
			if resp.StatusCode != tt.wantCode {
				t.Errorf("GET narinfo = %d %q, want %d", resp.StatusCode, body, tt.wantCode)
			}

			has, err := s.HasPath(context.Background(), "/nix/store/"+pullHashA+"-top")
			if err != nil || has {
				t.Errorf("HasPath after a failed pull = %v, %v, want false, nil", has, err)
			}
		})
	}
}

func TestPullAcceptsContentAddressedWithoutSignature(t *testing.T) {
	u := newFakeUpstream(t)
	_, srv := newPullStore(t, u, nil)

	narBytes := makeNAR(t, []byte("source\n"))
	pi := pathInfoFor(pullHashA, "src", narBytes)
	info := &narinfo.NarInfo{StorePath: "/nix/store/x", URL: "nar/x.nar", Compression: "none", NarSize: pi.NarSize}
	info.NarHash, _ = narinfo.ParseHash(pi.NarHash)
	info.CA = "fixed:r:" + pi.NarHash
	info.StorePath = makeStorePathForTest(t, info, "src")

	u.mu.Lock()
	u.files["/"+narinfo.HashPart(info.StorePath)+".narinfo"] = narinfo.Format(info)
	u.files["/nar/x.nar"] = narBytes
	u.mu.Unlock()

	resp, body := get(t, srv.URL+"/"+narinfo.HashPart(info.StorePath)+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET unsigned content-addressed narinfo = %d %q, want 200", resp.StatusCode, body)
	}

	// The same unsigned narinfo under a store path its CA does not give.
	info.StorePath = "/nix/store/" + pullHashB + "-src"
	u.mu.Lock()
	u.files["/"+pullHashB+".narinfo"] = narinfo.Format(info)
	u.mu.Unlock()

	resp, body = get(t, srv.URL+"/"+pullHashB+".narinfo")
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("GET unsigned narinfo whose CA gives another path = %d %q, want 502", resp.StatusCode, body)
	}
}

// makeStorePathForTest returns the store path that info's CA field gives
// for name, found by asking CheckContentAddress for its expectation.
func makeStorePathForTest(t *testing.T, info *narinfo.NarInfo, name string) string {
	t.Helper()

	probe := *info
	probe.StorePath = "/nix/store/" + strings.Repeat("0", 32) + "-" + name

	err := narinfo.CheckContentAddress(&probe)
	if err == nil {
		return probe.StorePath
	}

	// The error names the expected path as the second quoted value.
	parts := strings.Split(err.Error(), "\"")
	if len(parts) < 4 {
		t.Fatalf("CheckContentAddress error %q does not name the expected path", err)
	}

	return parts[3]
}

func TestPullTamperedNarHash(t *testing.T) {
	u := newFakeUpstream(t)
	info, narBytes := u.addPath(pullHashA, "top", []byte("top\n"))

	// The narinfo is signed, but the file it names holds other bytes of
	// the same length.
	u.mu.Lock()
	u.files["/"+info.URL] = bytes.ReplaceAll(narBytes, []byte("top\n"), []byte("bad\n"))
	u.mu.Unlock()

	s, srv := newPullStore(t, u, nil)

	resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET narinfo = %d, want 200", resp.StatusCode)
	}

	local, _ := parseNarInfoString(string(body))

	res, err := http.Get(srv.URL + "/" + local.URL)
	if err == nil {
		data, readErr := io.ReadAll(res.Body)
		res.Body.Close()

		if res.StatusCode == http.StatusOK && readErr == nil {
			t.Errorf("GET tampered NAR = 200 with %d complete bytes, want an error", len(data))
		}
	}

	assertNoNARFiles(t, s)
}

func TestPullCutBody(t *testing.T) {
	u := newFakeUpstream(t)
	info, narBytes := u.addPath(pullHashA, "top", bytes.Repeat([]byte("x"), 200_000))

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.RequestURI() != "/"+info.URL {
			return false
		}

		w.Header().Set("Content-Length", strconv.Itoa(len(narBytes)))
		w.Write(narBytes[:len(narBytes)/2])
		panic(http.ErrAbortHandler)
	})

	s, srv := newPullStore(t, u, nil)

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, _ := parseNarInfoString(string(body))

	res, err := http.Get(srv.URL + "/" + local.URL)
	if err == nil {
		data, readErr := io.ReadAll(res.Body)
		res.Body.Close()

		if res.StatusCode == http.StatusOK && readErr == nil {
			t.Errorf("GET NAR with a cut upstream body = 200 with %d complete bytes, want an error", len(data))
		}
	}

	assertNoNARFiles(t, s)
}

func assertNoNARFiles(t *testing.T, s *Store) {
	t.Helper()

	waitFor(t, "downloads to end", func() bool {
		s.narFlightsMu.Lock()
		defer s.narFlightsMu.Unlock()

		return len(s.narFlights) == 0
	})

	entries, err := os.ReadDir(s.narDir)
	if err != nil {
		t.Fatal(err)
	}

	if len(entries) != 0 {
		t.Errorf("nar directory holds %d files after a failed download, want 0", len(entries))
	}
}

// waitFor polls cond until it holds, and fails the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()

	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}

		time.Sleep(5 * time.Millisecond)
	}
}

func TestPullBlackHoleOpensBreaker(t *testing.T) {
	u := newFakeUpstream(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		<-release
		return true
	})

	const budget = 300 * time.Millisecond

	_, srv := newPullStore(t, u, func(cfg *Config) {
		cfg.UpstreamBudget = budget
		cfg.UpstreamBreaker = upstream.BreakerConfig{Failures: 2, Cooldown: time.Hour}
	})

	for i, hashPart := range []string{pullHashA, pullHashB} {
		start := time.Now()
		resp, _ := get(t, srv.URL+"/"+hashPart+".narinfo")
		elapsed := time.Since(start)

		if resp.StatusCode != http.StatusGatewayTimeout {
			t.Errorf("miss %d on a black hole = %d, want 504", i+1, resp.StatusCode)
		}

		if elapsed > budget+time.Second {
			t.Errorf("miss %d on a black hole took %v, want about the budget of %v", i+1, elapsed, budget)
		}
	}

	start := time.Now()
	resp, _ := get(t, srv.URL+"/"+pullHashC+".narinfo")

	if elapsed := time.Since(start); elapsed > budget/2 {
		t.Errorf("miss after the breaker opened took %v, want an immediate answer", elapsed)
	}

	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("miss after the breaker opened = %d, want 502", resp.StatusCode)
	}
}

func TestPullSlowNarInfoBody(t *testing.T) {
	u := newFakeUpstream(t)
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		w.Header().Set("Content-Length", "1000")
		io.WriteString(w, "StorePath: /nix/store/")
		http.NewResponseController(w).Flush()
		<-release

		return true
	})

	const budget = 300 * time.Millisecond

	_, srv := newPullStore(t, u, func(cfg *Config) { cfg.UpstreamBudget = budget })

	start := time.Now()
	resp, _ := get(t, srv.URL+"/"+pullHashA+".narinfo")

	if resp.StatusCode != http.StatusGatewayTimeout {
		t.Errorf("GET narinfo with a slow upstream body = %d, want 504", resp.StatusCode)
	}

	if elapsed := time.Since(start); elapsed > budget+time.Second {
		t.Errorf("GET narinfo with a slow upstream body took %v, want about %v", elapsed, budget)
	}
}

func TestPullOneUpstreamGETForParallelClients(t *testing.T) {
	const clients = 50

	u := newFakeUpstream(t)
	info, narBytes := u.addPath(pullHashA, "top", bytes.Repeat([]byte("0123456789"), 100_000))

	// The upstream sends half the file and waits until every client has
	// its response headers, which shows the first bytes reach clients
	// before the download ends.
	headers := make(chan struct{}, clients)
	rest := make(chan struct{})

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.RequestURI() != "/"+info.URL {
			return false
		}

		w.Header().Set("Content-Length", strconv.Itoa(len(narBytes)))
		w.Write(narBytes[:len(narBytes)/2])
		http.NewResponseController(w).Flush()
		<-rest
		w.Write(narBytes[len(narBytes)/2:])

		return true
	})

	_, srv := newPullStore(t, u, nil)

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, _ := parseNarInfoString(string(body))

	var wg sync.WaitGroup

	bodies := make([][]byte, clients)
	errs := make([]error, clients)

	for i := range clients {
		wg.Go(func() {
			res, err := http.Get(srv.URL + "/" + local.URL)
			headers <- struct{}{}

			if err != nil {
				errs[i] = err
				return
			}

			defer res.Body.Close()

			bodies[i], errs[i] = io.ReadAll(res.Body)
		})
	}

	for range clients {
		select {
		case <-headers:
		case <-time.After(10 * time.Second):
			close(rest)
			t.Fatal("clients got no response headers before the download ended")
		}
	}

	close(rest)
	wg.Wait()

	for i := range clients {
		if errs[i] != nil || !bytes.Equal(bodies[i], narBytes) {
			t.Errorf("client %d got %d bytes, error %v, want the %d bytes of the NAR", i, len(bodies[i]), errs[i], len(narBytes))
		}
	}

	if got := u.getCount("/" + info.URL); got != 1 {
		t.Errorf("upstream GETs of the NAR for %d clients = %d, want 1", clients, got)
	}
}

func TestPullSurvivesClientDisconnect(t *testing.T) {
	u := newFakeUpstream(t)
	info, narBytes := u.addPath(pullHashA, "top", bytes.Repeat([]byte("x"), 300_000))
	rest := make(chan struct{})

	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.RequestURI() != "/"+info.URL {
			return false
		}

		w.Write(narBytes[:1000])
		http.NewResponseController(w).Flush()
		<-rest
		w.Write(narBytes[1000:])

		return true
	})

	s, srv := newPullStore(t, u, nil)

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, _ := parseNarInfoString(string(body))

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+"/"+local.URL, nil)

	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}

	buf := make([]byte, 10)
	io.ReadFull(res.Body, buf)
	cancel()
	res.Body.Close()
	close(rest)

	waitFor(t, "the NAR to land after the client left", func() bool {
		_, err := os.Stat(s.narDir + "/" + strings.TrimPrefix(local.URL, "nar/"))
		return err == nil
	})
}

func TestPullRangeAndHead(t *testing.T) {
	u := newFakeUpstream(t)
	_, narBytes := u.addPath(pullHashA, "top", []byte("range me\n"))
	_, srv := newPullStore(t, u, nil)

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, _ := parseNarInfoString(string(body))

	resp, body := do(t, http.MethodHead, srv.URL+"/"+local.URL, nil, nil)
	if resp.StatusCode != http.StatusOK || len(body) != 0 {
		t.Errorf("HEAD pulled NAR before the download = %d with %d bytes, want 200 without a body", resp.StatusCode, len(body))
	}

	resp, body = do(t, http.MethodGet, srv.URL+"/"+local.URL, nil, http.Header{"Range": {"bytes=0-7"}})
	if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, narBytes[:8]) {
		t.Errorf("GET bytes=0-7 of pulled NAR = %d %q, want 206 %q", resp.StatusCode, body, narBytes[:8])
	}

	if got, want := resp.Header.Get("Content-Range"), "bytes 0-7/"+strconv.Itoa(len(narBytes)); got != want {
		t.Errorf("Content-Range = %q, want %q", got, want)
	}

	resp, _ = do(t, http.MethodGet, srv.URL+"/"+local.URL, nil, http.Header{"Range": {"bytes=100000-"}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("GET range past the end = %d, want 416", resp.StatusCode)
	}

	resp, body = do(t, http.MethodHead, srv.URL+"/"+local.URL, nil, nil)
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(narBytes)) || len(body) != 0 {
		t.Errorf("HEAD committed NAR = %d, length %d, %d body bytes, want 200, %d, 0", resp.StatusCode, resp.ContentLength, len(body), len(narBytes))
	}
}

func TestPullPrefersLowerPriority(t *testing.T) {
	slow := newFakeUpstream(t)
	fast := newFakeUpstream(t)
	slow.addPath(pullHashA, "top", []byte("top\n"))
	fast.addPath(pullHashA, "top", []byte("top\n"))

	s, srv := newPullStore(t, slow, nil)
	if _, err := s.AddUpstream(context.Background(), Upstream{URL: fast.srv.URL, PublicKeys: []string{fast.public}, Priority: 10}); err != nil {
		t.Fatal(err)
	}

	resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET narinfo = %d, want 200", resp.StatusCode)
	}

	info, _ := parseNarInfoString(string(body))
	fastKey, _ := narinfo.ParsePublicKey(fast.public)

	if err := narinfo.Verify(info, []narinfo.PublicKey{fastKey}); err != nil {
		t.Errorf("narinfo came from the upstream with priority 50, want the one with priority 10: %v", err)
	}
}
