package cache

import (
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestPullHeadMatchesGet checks that HEAD of a pulled NAR that is not
// downloaded yet sends a HEAD request to the upstream, downloads nothing, and gets
// the status that a GET of the same NAR gets afterwards.
func TestPullHeadMatchesGet(t *testing.T) {
	const budget = 300 * time.Millisecond

	tests := []struct {
		name string
		// hook handles the upstream's requests for the NAR file, or nil
		// to serve it.
		hook     func(w http.ResponseWriter, release <-chan struct{})
		wantCode int
	}{
		{name: "served", wantCode: http.StatusOK},
		{
			name:     "not found upstream",
			hook:     func(w http.ResponseWriter, _ <-chan struct{}) { http.Error(w, "gone", http.StatusNotFound) },
			wantCode: http.StatusNotFound,
		},
		{
			name:     "upstream server error",
			hook:     func(w http.ResponseWriter, _ <-chan struct{}) { http.Error(w, "boom", http.StatusInternalServerError) },
			wantCode: http.StatusBadGateway,
		},
		{
			name: "HTML page",
			hook: func(w http.ResponseWriter, _ <-chan struct{}) {
				w.Header().Set("Content-Type", "text/html")
				w.Write([]byte("<html>log in</html>"))
			},
			wantCode: http.StatusBadGateway,
		},
		{
			name:     "black hole",
			hook:     func(_ http.ResponseWriter, release <-chan struct{}) { <-release },
			wantCode: http.StatusGatewayTimeout,
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newFakeUpstream(t)
			info, narBytes := u.addPath(pullHashA, "top", []byte("head me\n"))

			release := make(chan struct{})
			t.Cleanup(func() { close(release) })

			var (
				mu      sync.Mutex
				methods []string
			)

			u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
				if r.URL.RequestURI() != "/"+info.URL {
					return false
				}

				mu.Lock()
				methods = append(methods, r.Method)
				mu.Unlock()

				if tt.hook == nil {
					return false
				}

				tt.hook(w, release)

				return true
			})

			s, srv := newPullStore(t, u, func(cfg *Config) {
				cfg.UpstreamBudget = budget
				cfg.NARIdleTimeout = budget
			})

			_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")

			local, err := parseNarInfoString(string(body))
			if err != nil {
				t.Fatalf("parse pulled narinfo: %v", err)
			}

			start := time.Now()
			resp, body := do(t, http.MethodHead, srv.URL+"/"+local.URL, nil, nil)
			elapsed := time.Since(start)

			if resp.StatusCode != tt.wantCode {
				t.Errorf("HEAD pulled NAR = %d, want %d", resp.StatusCode, tt.wantCode)
			}

			if len(body) != 0 {
				t.Errorf("HEAD pulled NAR sent %d body bytes, want 0", len(body))
			}

			if elapsed > budget+time.Second {
				t.Errorf("HEAD pulled NAR took %v, want at most about the budget of %v", elapsed, budget)
			}

			if tt.wantCode == http.StatusOK && resp.ContentLength != int64(len(narBytes)) {
				t.Errorf("HEAD pulled NAR Content-Length = %d, want %d", resp.ContentLength, len(narBytes))
			}

			mu.Lock()
			headMethods := append([]string(nil), methods...)
			mu.Unlock()

			if len(headMethods) != 1 || headMethods[0] != http.MethodHead {
				t.Errorf("upstream requests for the NAR during HEAD = %q, want one HEAD", headMethods)
			}

			assertNoNARFiles(t, s)

			resp, _ = get(t, srv.URL+"/"+local.URL)
			if resp.StatusCode != tt.wantCode {
				t.Errorf("GET pulled NAR after HEAD = %d, want %d like HEAD", resp.StatusCode, tt.wantCode)
			}

			// The narinfo has no FileSize, so the GET that starts the
			// download sends the upstream's Content-Length.
			if got := resp.Header.Get("Content-Length"); tt.wantCode == http.StatusOK && got != strconv.Itoa(len(narBytes)) {
				t.Errorf("GET pulled NAR Content-Length = %q, want %d", got, len(narBytes))
			}
		})
	}
}
