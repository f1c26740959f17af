package cache

import (
	"context"
	"crypto/sha256"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// fakeUpstream is a binary cache on loopback that serves narinfos signed
// by its own key and uncompressed NARs at URLs with a query, and lets a
// test replace the answer for any path.
type fakeUpstream struct {
	t      testing.TB
	srv    *httptest.Server
	secret narinfo.SecretKey
	public string

	// mu guards the fields below.
	mu    sync.Mutex
	files map[string][]byte
	gets  map[string]int
	// hook may answer a request instead of the stored files. It returns
	// true when it did.
	hook func(w http.ResponseWriter, r *http.Request) bool
}

func newFakeUpstream(t testing.TB) *fakeUpstream {
	t.Helper()

	secret, public, err := narinfo.GenerateKey("upstream-test-1")
	if err != nil {
		t.Fatal(err)
	}

	u := &fakeUpstream{t: t, secret: secret, public: public.String(), files: map[string][]byte{}, gets: map[string]int{}}
	u.srv = httptest.NewServer(http.HandlerFunc(u.serve))
	t.Cleanup(u.srv.Close)

	return u
}

func (u *fakeUpstream) serve(w http.ResponseWriter, r *http.Request) {
	u.mu.Lock()
	u.gets[r.URL.RequestURI()]++
	hook := u.hook
	data, ok := u.files[r.URL.RequestURI()]
	u.mu.Unlock()

	if hook != nil && hook(w, r) {
		return
	}

	if !ok {
		http.NotFound(w, r)
		return
	}

	w.Write(data)
}

func (u *fakeUpstream) setHook(hook func(w http.ResponseWriter, r *http.Request) bool) {
	u.mu.Lock()
	defer u.mu.Unlock()

	u.hook = hook
}

// getCount returns how many GETs requestURI received.
func (u *fakeUpstream) getCount(requestURI string) int {
	u.mu.Lock()
	defer u.mu.Unlock()

	return u.gets[requestURI]
}

// addPath stores a signed narinfo and the NAR of a regular file with
// contents as /nix/store/<hashPart>-<name>, and returns the narinfo and
// the NAR. The NAR's URL is nar/<NarHash>.nar?hash=<hashPart>.
func (u *fakeUpstream) addPath(hashPart, name string, contents []byte, refs ...string) (*narinfo.NarInfo, []byte) {
	u.t.Helper()

	narBytes := makeNAR(u.t, contents)
	sum := sha256.Sum256(narBytes)
	digest := nixbase32.EncodeToString(sum[:])

	info, err := parseNarInfoString(
		"StorePath: /nix/store/" + hashPart + "-" + name + "\n" +
			"URL: nar/" + digest + ".nar?hash=" + hashPart + "\n" +
			"Compression: none\n" +
			"NarHash: sha256:" + digest + "\n" +
			"NarSize: " + strconv.Itoa(len(narBytes)) + "\n" +
			"References: " + strings.Join(refs, " ") + "\n")
	if err != nil {
		u.t.Fatal(err)
	}

	u.put(info, narBytes)

	return info, narBytes
}

// put signs info and stores it with narBytes at its URL.
func (u *fakeUpstream) put(info *narinfo.NarInfo, narBytes []byte) {
	u.t.Helper()

	info.Signatures = nil
	if err := narinfo.Sign(info, u.secret); err != nil {
		u.t.Fatal(err)
	}

	u.mu.Lock()
	defer u.mu.Unlock()

	u.files["/"+narinfo.HashPart(info.StorePath)+".narinfo"] = narinfo.Format(info)
	u.files["/"+info.URL] = narBytes
}

// newPullStore opens a Store with u as its only upstream and short
// budgets, and serves it on loopback.
func newPullStore(t *testing.T, u *fakeUpstream, modify func(*Config)) (*Store, *httptest.Server) {
	t.Helper()

	s := newTestStore(t, func(cfg *Config) {
		cfg.UpstreamBudget = 2 * time.Second
		cfg.NARIdleTimeout = 5 * time.Second
		cfg.NegativeTTL = -1

		if modify != nil {
			modify(cfg)
		}
	})

	if _, err := s.AddUpstream(context.Background(), Upstream{URL: u.srv.URL, PublicKeys: []string{u.public}}); err != nil {
		t.Fatalf("AddUpstream: %v", err)
	}

	srv := httptest.NewServer(s.Handler(HandlerOptions{Authorize: func(*http.Request) bool { return true }}))
	t.Cleanup(srv.Close)

	return s, srv
}
