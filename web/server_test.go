package web

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
)

type fakeEvaluator struct{ queued []uint64 }

func (f *fakeEvaluator) Enqueue(_ context.Context, id uint64) error {
	f.queued = append(f.queued, id)
	return nil
}

// dirLogs serves logs from files named after the .drv base name.
type dirLogs string

func (d dirLogs) OpenLog(_ context.Context, drvPath string) (io.ReadCloser, error) {
	return os.Open(filepath.Join(string(d), filepath.Base(drvPath)+".log"))
}

const testToken = "secret-token"

func newTestServer(t *testing.T) (*httptest.Server, *db.DB, *fakeEvaluator, string) {
	t.Helper()
	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })
	logDir := t.TempDir()
	ev := &fakeEvaluator{}
	srv := New(Config{DB: records, Evaluator: ev, Logs: dirLogs(logDir), AdminToken: testToken, LogPollInterval: 10 * time.Millisecond})
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts, records, ev, logDir
}

func request(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestAPIRejectsBadToken(t *testing.T) {
	ts, _, _, _ := newTestServer(t)
	for _, token := range []string{"", "wrong", testToken + "x"} {
		code, body := request(t, http.MethodGet, ts.URL+"/api/v1/projects", token, "")
		if code != http.StatusUnauthorized {
			t.Errorf("GET /projects with token %q = %d, want 401", token, code)
		}
		if !strings.Contains(body, "token") {
			t.Errorf("401 body %q does not mention the token", body)
		}
	}

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/v1/projects", nil)
	req.SetBasicAuth("anyone", testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /projects with the token as Basic password = %d, want 200", resp.StatusCode)
	}
}

func TestCreateProjectValidation(t *testing.T) {
	ts, _, _, _ := newTestServer(t)
	tests := []struct {
		name, body string
		code       int
		field      string
	}{
		{"ok", `{"org":"demo","name":"hello","flake":"github:owner/repo"}`, 201, ""},
		{"exists", `{"org":"demo","name":"hello","flake":"github:owner/repo"}`, 409, "already exists"},
		{"relative flake", `{"org":"demo","name":"x","flake":"src/repo"}`, 400, "flake"},
		{"empty flake", `{"org":"demo","name":"x","flake":""}`, 400, "flake"},
		{"bad pattern", `{"org":"demo","name":"x","flake":"github:o/r","entry_points":["packages..x"]}`, 400, "entry_points"},
		{"bad org", `{"org":"de mo","name":"x","flake":"github:o/r"}`, 400, "org"},
		{"unknown field", `{"org":"demo","name":"x","flake":"github:o/r","flakes":1}`, 400, "flakes"},
		{"not json", `{`, 400, "invalid request body"},
		{"trailing data", `{"org":"demo","name":"y","flake":"github:o/r"} {}`, 400, "unexpected data"},
	}
	for _, tc := range tests {
		code, body := request(t, http.MethodPost, ts.URL+"/api/v1/projects", testToken, tc.body)
		if code != tc.code {
			t.Errorf("%s: POST /projects = %d %s, want %d", tc.name, code, body, tc.code)
		}
		if !strings.Contains(body, tc.field) {
			t.Errorf("%s: body %q does not name %q", tc.name, body, tc.field)
		}
	}

	code, body := request(t, http.MethodGet, ts.URL+"/api/v1/projects/demo/hello", testToken, "")
	var p db.Project
	if code != 200 || json.Unmarshal([]byte(body), &p) != nil {
		t.Fatalf("GET project = %d %s", code, body)
	}
	if strings.Join(p.EntryPoints, ",") != "packages.*.*,checks.*.*" {
		t.Errorf("default entry points = %v, want packages.*.*,checks.*.*", p.EntryPoints)
	}
}

func TestEvaluateQueuesAndNotFound(t *testing.T) {
	ts, _, ev, _ := newTestServer(t)
	request(t, http.MethodPost, ts.URL+"/api/v1/projects", testToken, `{"org":"demo","name":"hello","flake":"/src"}`)

	code, body := request(t, http.MethodPost, ts.URL+"/api/v1/projects/demo/hello/evaluations", testToken, "")
	if code != http.StatusAccepted {
		t.Fatalf("POST evaluations = %d %s, want 202", code, body)
	}
	if len(ev.queued) != 1 {
		t.Errorf("queued evaluations = %v, want one", ev.queued)
	}

	notFound := []string{
		"/api/v1/projects/demo/missing",
		"/api/v1/projects/demo/missing/evaluations",
		"/api/v1/evaluations/999",
		"/api/v1/builds/999",
		"/api/v1/caches/nope",
		"/api/v1/nothing-here",
	}
	for _, path := range notFound {
		if code, body := request(t, http.MethodGet, ts.URL+path, testToken, ""); code != http.StatusNotFound {
			t.Errorf("GET %s = %d %s, want 404", path, code, body)
		}
	}
	for _, path := range []string{"/api/v1/evaluations/abc", "/api/v1/builds/0", "/api/v1/builds/-1"} {
		if code, _ := request(t, http.MethodGet, ts.URL+path, testToken, ""); code != http.StatusBadRequest {
			t.Errorf("GET %s = %d, want 400", path, code)
		}
	}
	if code, _ := request(t, http.MethodGet, ts.URL+"/api/v1/projects/demo/hello/evaluations?limit=0", testToken, ""); code != http.StatusBadRequest {
		t.Errorf("limit=0 = %d, want 400", code)
	}
}

func TestBuildLogFollowEndsWithBuild(t *testing.T) {
	ts, records, _, logDir := newTestServer(t)
	bs := []db.Build{{DrvPath: "/nix/store/aaaa-x.drv", Status: db.BuildBuilding}}
	if err := records.CreateBuilds(1, bs); err != nil {
		t.Fatal(err)
	}
	logFile := filepath.Join(logDir, "aaaa-x.drv.log")
	if err := os.WriteFile(logFile, []byte("first line\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	resp, err := http.Get(ts.URL + "/api/v1/builds/" + db.FormatID(bs[0].ID) + "/log?follow=true&token=x")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("log without a token = %d, want 401", resp.StatusCode)
	}

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/v1/builds/"+db.FormatID(bs[0].ID)+"/log?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	buf := make([]byte, len("first line\n"))
	if _, err := io.ReadFull(resp.Body, buf); err != nil || string(buf) != "first line\n" {
		t.Fatalf("first read = %q, %v", buf, err)
	}

	// Output written while the build runs arrives, and the response ends
	// once the build is finished.
	f, err := os.OpenFile(logFile, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("second line\n")
	f.Close()
	bs[0].Status = db.BuildSucceeded
	if err := records.PutBuild(bs[0]); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "second line\n" {
		t.Errorf("rest of followed log = %q, want %q", rest, "second line\n")
	}
}

func TestBuildLogFollowWaitsForStart(t *testing.T) {
	ts, records, _, logDir := newTestServer(t)
	bs := []db.Build{{DrvPath: "/nix/store/bbbb-queued.drv", Status: db.BuildQueued}}
	if err := records.CreateBuilds(1, bs); err != nil {
		t.Fatal(err)
	}

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/v1/builds/"+db.FormatID(bs[0].ID)+"/log?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("follow of a queued build = %d, want 200", resp.StatusCode)
	}

	// The build starts, writes its log and finishes; the response carries
	// the whole log and ends.
	if err := os.WriteFile(filepath.Join(logDir, "bbbb-queued.drv.log"), []byte("built\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bs[0].Status = db.BuildSucceeded
	if err := records.PutBuild(bs[0]); err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if string(body) != "built\n" {
		t.Errorf("followed log = %q, want %q", body, "built\n")
	}
}

func TestRequestBodyErrors(t *testing.T) {
	ts, _, _, _ := newTestServer(t)
	tests := []struct {
		name, body string
		code       int
		want       string
	}{
		{"wrong type", `{"org":"demo","name":"x","flake":"/src","entry_points":"packages.*.*"}`, 400, `field "entry_points" must be a JSON array`},
		{"unknown field", `{"org":"demo","name":"x","flake":"/src","flakes":1}`, 400, `unknown field "flakes"`},
		{"empty", ``, 400, "body is empty"},
		{"too large", `{"org":"` + strings.Repeat("a", 2<<20) + `"}`, 413, "larger than"},
	}
	for _, tc := range tests {
		code, raw := request(t, http.MethodPost, ts.URL+"/api/v1/projects", testToken, tc.body)
		if code != tc.code {
			t.Errorf("%s: status = %d, want %d", tc.name, code, tc.code)
		}
		var e apiError
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			t.Fatalf("%s: body %q is not an API error: %v", tc.name, raw, err)
		}
		body := e.Error
		if !strings.Contains(body, tc.want) {
			t.Errorf("%s: body %q does not contain %q", tc.name, body, tc.want)
		}
		if strings.Contains(body, "Go struct") {
			t.Errorf("%s: body %q exposes Go type names", tc.name, body)
		}
	}
}

func TestStopEndsFollowedLog(t *testing.T) {
	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer records.Close()
	srv := New(Config{DB: records, Evaluator: &fakeEvaluator{}, Logs: dirLogs(t.TempDir()), AdminToken: testToken, LogPollInterval: 10 * time.Millisecond})
	ts := httptest.NewServer(srv)
	defer ts.Close()
	bs := []db.Build{{DrvPath: "/nix/store/cccc-running.drv", Status: db.BuildBuilding}}
	if err := records.CreateBuilds(1, bs); err != nil {
		t.Fatal(err)
	}

	req, _ := http.NewRequest(http.MethodGet, ts.URL+"/api/v1/builds/"+db.FormatID(bs[0].ID)+"/log?follow=true", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	srv.Stop()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), "shutting down") {
		t.Errorf("followed log after Stop = %q, want a note that the node is shutting down", body)
	}
}
