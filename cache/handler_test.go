package cache

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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

	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}

	return resp, data
}
