package cache

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

func TestHandlerServesNarInfoAndNAR(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))

	if err := s.PutNAR(ctx, pathInfoFor(hashA, "hello", narBytes), bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(http.StripPrefix("/cache/main", s.Handler(HandlerOptions{})))
	defer srv.Close()

	resp, body := get(t, srv.URL+"/cache/main/"+hashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET narinfo status = %d, want 200", resp.StatusCode)
	}

	if ct := resp.Header.Get("Content-Type"); ct != narinfo.ContentType {
		t.Errorf("GET narinfo Content-Type = %q, want %q", ct, narinfo.ContentType)
	}

	ni, err := narinfo.Parse(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse served narinfo: %v", err)
	}

	resp, nar := get(t, srv.URL+"/cache/main/"+ni.URL)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s status = %d, want 200", ni.URL, resp.StatusCode)
	}

	if uint64(len(nar)) != ni.FileSize {
		t.Errorf("GET %s returned %d bytes, want FileSize %d", ni.URL, len(nar), ni.FileSize)
	}

	resp, body = get(t, srv.URL+"/cache/main/"+hashB+".narinfo")
	if resp.StatusCode != http.StatusNotFound || len(body) != 0 {
		t.Errorf("GET unknown narinfo = %d with %d bytes, want 404 with empty body", resp.StatusCode, len(body))
	}

	resp, body = get(t, srv.URL+"/cache/main/nix-cache-info")
	want := "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n"
	if resp.StatusCode != http.StatusOK || string(body) != want {
		t.Errorf("GET nix-cache-info = %d %q, want 200 %q", resp.StatusCode, body, want)
	}
}

func get(t *testing.T, url string) (*http.Response, []byte) {
	t.Helper()

	return do(t, http.MethodGet, url, nil, nil)
}

func do(t *testing.T, method, url string, body io.Reader, header http.Header) (*http.Response, []byte) {
	t.Helper()

	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}

	for k, v := range header {
		req.Header[k] = v
	}

	return doRequest(t, req)
}

func doRequest(t *testing.T, req *http.Request) (*http.Response, []byte) {
	t.Helper()

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", req.Method, req.URL, err)
	}

	return resp, data
}

// fakeLogs serves one build log.
type fakeLogs struct {
	drvPath string
	log     string
}

func (l fakeLogs) OpenLog(ctx context.Context, drvPath string) (io.ReadCloser, error) {
	if drvPath != l.drvPath {
		return nil, fmt.Errorf("open log %q: %w", drvPath, ErrNotFound)
	}

	return io.NopCloser(strings.NewReader(l.log)), nil
}

func TestHandlerResponses(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, func(c *Config) {
		c.Priority = 30
		c.StoreDir = "/gnu/store"
	})
	narBytes := makeNAR(t, []byte("hello\n"))
	info := pathInfoFor(hashA, "hello", narBytes)
	info.StorePath = "/gnu/store/" + hashA + "-hello"

	if err := s.PutNAR(ctx, info, bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}

	stored, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatal(err)
	}

	drvName := hashB + "-hello.drv"
	srv := httptest.NewServer(s.Handler(HandlerOptions{Logs: fakeLogs{drvPath: "/gnu/store/" + drvName, log: "building\n"}}))
	defer srv.Close()

	tests := []struct {
		name            string
		method          string
		path            string
		wantCode        int
		wantBody        string // checked when not empty
		wantEmptyBody   bool
		wantContentType string
		wantLength      int64 // checked when not zero
	}{
		{name: "cache info", method: "GET", path: "/nix-cache-info", wantCode: 200,
			wantBody: "StoreDir: /gnu/store\nWantMassQuery: 1\nPriority: 30\n", wantContentType: "text/x-nix-cache-info"},
		{name: "narinfo HEAD", method: "HEAD", path: "/" + hashA + ".narinfo", wantCode: 200, wantEmptyBody: true,
			wantContentType: narinfo.ContentType, wantLength: int64(len(narinfo.Format(stored)))},
		{name: "NAR GET", method: "GET", path: "/" + stored.URL, wantCode: 200,
			wantContentType: "application/x-nix-nar", wantLength: int64(stored.FileSize)},
		{name: "NAR HEAD", method: "HEAD", path: "/" + stored.URL, wantCode: 200, wantEmptyBody: true,
			wantContentType: "application/x-nix-nar", wantLength: int64(stored.FileSize)},
		{name: "unknown narinfo", method: "GET", path: "/" + hashB + ".narinfo", wantCode: 404, wantEmptyBody: true},
		{name: "unknown NAR", method: "GET", path: "/nar/" + strings.Repeat("0", 52) + ".nar.xz", wantCode: 404, wantEmptyBody: true},
		{name: "bad narinfo name", method: "GET", path: "/eeee.narinfo", wantCode: 404, wantEmptyBody: true},
		{name: "listing", method: "GET", path: "/" + hashA + ".ls", wantCode: 200,
			wantContentType: "application/json", wantBody: `{"version":1,"root":{"type":"regular","size":6,"narOffset":96}}`},
		{name: "unknown listing", method: "GET", path: "/" + hashB + ".ls", wantCode: 404, wantEmptyBody: true},
		{name: "root", method: "GET", path: "/", wantCode: 404, wantEmptyBody: true},
		{name: "log", method: "GET", path: "/log/" + drvName, wantCode: 200, wantBody: "building\n"},
		{name: "unknown log", method: "GET", path: "/log/" + hashA + "-other.drv", wantCode: 404, wantEmptyBody: true},
		{name: "log of non-drv", method: "GET", path: "/log/" + hashA + "-hello", wantCode: 404, wantEmptyBody: true},
		{name: "traversal", method: "GET", path: "/nar/../" + hashA + ".narinfo", wantCode: 400},
		{name: "DELETE", method: "DELETE", path: "/" + hashA + ".narinfo", wantCode: 405},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := do(t, tt.method, srv.URL+tt.path, nil, nil)

			if resp.StatusCode != tt.wantCode {
				t.Errorf("%s %s = %d, want %d", tt.method, tt.path, resp.StatusCode, tt.wantCode)
			}

			if tt.wantBody != "" && string(body) != tt.wantBody {
				t.Errorf("%s %s body = %q, want %q", tt.method, tt.path, body, tt.wantBody)
			}

			if tt.wantEmptyBody && len(body) != 0 {
				t.Errorf("%s %s body = %q, want empty", tt.method, tt.path, body)
			}

			if ct := resp.Header.Get("Content-Type"); tt.wantContentType != "" && ct != tt.wantContentType {
				t.Errorf("%s %s Content-Type = %q, want %q", tt.method, tt.path, ct, tt.wantContentType)
			}

			if tt.wantLength != 0 && resp.ContentLength != tt.wantLength {
				t.Errorf("%s %s Content-Length = %d, want %d", tt.method, tt.path, resp.ContentLength, tt.wantLength)
			}
		})
	}
}

func TestHandlerServesNARRange(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))

	if err := s.PutNAR(ctx, pathInfoFor(hashA, "hello", narBytes), bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}

	stored, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatal(err)
	}

	srv := httptest.NewServer(s.Handler(HandlerOptions{}))
	defer srv.Close()

	resp, body := do(t, http.MethodGet, srv.URL+"/"+stored.URL, nil, http.Header{"Range": {"bytes=0-3"}})
	if resp.StatusCode != http.StatusPartialContent || len(body) != 4 {
		t.Errorf("GET %s with Range bytes=0-3 = %d with %d bytes, want 206 with 4", stored.URL, resp.StatusCode, len(body))
	}
}
