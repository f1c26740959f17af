package cache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestStressReadsUploadsGC runs readers, an uploader and garbage
// collection at once on one cache. Uploads are pinned and must all
// survive with their NARs. Pulled paths are evicted and pulled again, and
// whatever a reader gets with 200 must be complete and correct. At the
// end every narinfo must have its NAR.
func TestStressReadsUploadsGC(t *testing.T) {
	const (
		pulledPaths = 16
		uploads     = 24
		readers     = 4
		readsEach   = 60
	)

	u := newFakeUpstream(t)

	nars := map[string][]byte{}
	for i := range pulledPaths {
		hashPart := hashFor(100 + i)
		_, nars[hashPart] = u.addPath(hashPart, fmt.Sprintf("pulled-%d", i), bytes.Repeat([]byte{byte('a' + i)}, 4000+i))
	}

	s, srv := newPullStore(t, u, nil)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	if _, err := s.UpdateSettings(ctx, SettingsUpdate{MaxSize: ptr(int64(30_000)), Pins: &[]string{"upload-*"}}); err != nil {
		t.Fatal(err)
	}

	var (
		wg       sync.WaitGroup
		done     atomic.Bool
		failures atomic.Int64
	)

	fail := func(format string, args ...any) {
		failures.Add(1)
		t.Errorf(format, args...)
	}

	for r := range readers {
		wg.Go(func() {
			for i := range readsEach {
				hashPart := hashFor(100 + (r*7+i)%pulledPaths)
				readPulled(ctx, srv.URL, hashPart, nars[hashPart], fail)
			}
		})
	}

	wg.Go(func() {
		for i := range uploads {
			putPath(t, s, hashFor(200+i), fmt.Sprintf("upload-%d", i), 3000)
		}
	})

	gcDone := make(chan struct{})

	go func() {
		defer close(gcDone)

		for !done.Load() {
			if _, err := s.GC(ctx, GCOptions{}); err != nil {
				fail("GC: %v", err)
				return
			}
		}
	}()

	wg.Wait()
	done.Store(true)
	<-gcDone

	if failures.Load() > 0 {
		return
	}

	for i := range uploads {
		hashPart := hashFor(200 + i)

		resp, body := get(t, srv.URL+"/"+hashPart+".narinfo")
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET narinfo of pinned upload %d = %d, want 200", i, resp.StatusCode)
			continue
		}

		info, _ := parseNarInfoString(string(body))
		if resp, _ := get(t, srv.URL+"/"+info.URL); resp.StatusCode != http.StatusOK {
			t.Errorf("GET NAR of pinned upload %d = %d, want 200", i, resp.StatusCode)
		}
	}

	assertEveryNarInfoHasNAR(t, s)
}

// readPulled fetches the narinfo and NAR of a pulled path and reports a
// 5xx answer or a 200 with wrong bytes. A 404 for the NAR is allowed,
// because garbage collection may evict the path between the requests.
func readPulled(ctx context.Context, base, hashPart string, want []byte, fail func(string, ...any)) {
	status, body, err := fetch(ctx, base+"/"+hashPart+".narinfo")
	if err != nil || status != http.StatusOK {
		fail("GET narinfo %s = %d, %v, want 200", hashPart, status, err)
		return
	}

	info, err := parseNarInfoString(string(body))
	if err != nil {
		fail("parse narinfo %s: %v", hashPart, err)
		return
	}

	status, body, err = fetch(ctx, base+"/"+info.URL)

	switch {
	case err != nil:
		fail("GET NAR of %s: %v", hashPart, err)
	case status == http.StatusOK && !bytes.Equal(body, want):
		fail("GET NAR of %s = 200 with %d bytes, want the %d bytes of its NAR", hashPart, len(body), len(want))
	case status != http.StatusOK && status != http.StatusNotFound:
		fail("GET NAR of %s = %d, want 200 or 404", hashPart, status)
	}
}

func fetch(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}

	defer resp.Body.Close()

	body, err := io.ReadAll(resp.Body)

	return resp.StatusCode, body, err
}
