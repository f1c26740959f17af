package web

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
)

// fakeWaits returns waits by .drv path for one evaluation, or err.
type fakeWaits struct {
	evalID uint64
	waits  map[string]db.Wait
	err    error
	// requests lists the .drv paths of each call.
	requests [][]string
}

func (f *fakeWaits) ExplainWaits(_ context.Context, evalID uint64, drvPaths []string) (map[string]db.Wait, error) {
	f.requests = append(f.requests, drvPaths)
	if f.err != nil {
		return nil, f.err
	}
	if evalID != f.evalID {
		return nil, nil
	}
	return f.waits, nil
}

// newWaitsServer returns a server whose builds of evaluation 1 are a
// failed leaf, a dependent of it, a queued build and a built one.
func newWaitsServer(t *testing.T, waits *fakeWaits) (*httptest.Server, []db.Build) {
	t.Helper()
	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })
	bs := []db.Build{
		{DrvPath: "/nix/store/leaf.drv", Name: "leaf", Status: db.BuildFailed, Error: "exit 3"},
		{DrvPath: "/nix/store/after.drv", Name: "after", Status: db.BuildDependencyFailed, FailedDependency: "/nix/store/leaf.drv"},
		{DrvPath: "/nix/store/queued.drv", Name: "queued", Status: db.BuildQueued, Waiting: "stored wait"},
		{DrvPath: "/nix/store/done.drv", Name: "done", Status: db.BuildSucceeded},
	}
	if err := records.CreateBuilds(1, bs); err != nil {
		t.Fatal(err)
	}
	if _, err := records.CreateProject(db.Project{Org: "demo", Name: "p", FlakeRef: "path:/src"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := records.CreateEvaluation("demo", "p", time.Now()); err != nil {
		t.Fatal(err)
	}
	srv := New(Config{DB: records, Evaluator: &fakeEvaluator{}, Logs: dirLogs(t.TempDir()), AdminToken: testToken, Waits: waits})
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return ts, bs
}

func getBuilds(t *testing.T, u string) []db.Build {
	t.Helper()
	code, body := request(t, http.MethodGet, u, testToken, "")
	if code != http.StatusOK {
		t.Fatalf("GET %s = %d %s", u, code, body)
	}
	var bs []db.Build
	if err := json.Unmarshal([]byte(body), &bs); err != nil {
		t.Fatalf("GET %s: %v in %s", u, err, body)
	}
	return bs
}

func TestBuildsCarryLiveWaits(t *testing.T) {
	until := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	waits := &fakeWaits{evalID: 1, waits: map[string]db.Wait{
		"/nix/store/queued.drv": {Reason: "inputs-building", Text: "waiting for input x", For: "/nix/store/x.drv", ForBuildID: 9, Until: until},
	}}
	ts, bs := newWaitsServer(t, waits)

	got := getBuilds(t, ts.URL+"/api/v1/evaluations/1/builds")
	if len(got) != 4 {
		t.Fatalf("GET builds = %d builds, want 4", len(got))
	}
	q := got[2]
	if q.Waiting != "waiting for input x" || q.WaitingReason != "inputs-building" {
		t.Errorf("queued build: waiting %q (%q), want the live wait", q.Waiting, q.WaitingReason)
	}
	if q.WaitingFor != "/nix/store/x.drv" || q.WaitingForBuildID != 9 {
		t.Errorf("queued build: waiting for %q (build %d), want /nix/store/x.drv (build 9)", q.WaitingFor, q.WaitingForBuildID)
	}
	if q.WaitingUntil == nil || !q.WaitingUntil.Equal(until) {
		t.Errorf("queued build: waiting until %v, want %v", q.WaitingUntil, until)
	}
	if got[1].FailedDependencyBuildID != bs[0].ID {
		t.Errorf("dependency_failed build: failed_dependency_build_id = %d, want %d", got[1].FailedDependencyBuildID, bs[0].ID)
	}
	if len(waits.requests) != 1 || len(waits.requests[0]) != 1 || waits.requests[0][0] != "/nix/store/queued.drv" {
		t.Errorf("explainer got requests for %v, want only the queued build", waits.requests)
	}

	code, body := request(t, http.MethodGet, ts.URL+"/api/v1/builds/"+db.FormatID(bs[1].ID), testToken, "")
	var one db.Build
	if code != http.StatusOK || json.Unmarshal([]byte(body), &one) != nil {
		t.Fatalf("GET build %d = %d %s", bs[1].ID, code, body)
	}
	if one.FailedDependencyBuildID != bs[0].ID {
		t.Errorf("GET build %d: failed_dependency_build_id = %d, want %d", bs[1].ID, one.FailedDependencyBuildID, bs[0].ID)
	}
}

func TestBuildsKeepStoredWaitOnError(t *testing.T) {
	ts, _ := newWaitsServer(t, &fakeWaits{err: errors.New("driver busy")})
	got := getBuilds(t, ts.URL+"/api/v1/evaluations/1/builds")
	if got[2].Waiting != "stored wait" {
		t.Errorf("queued build after an explainer error: waiting %q, want the stored wait", got[2].Waiting)
	}
}

func TestDerivationBuildsEndpoint(t *testing.T) {
	ts, bs := newWaitsServer(t, &fakeWaits{})

	got := getBuilds(t, ts.URL+"/api/v1/builds?drv_path="+url.QueryEscape("/nix/store/after.drv"))
	if len(got) != 1 || got[0].ID != bs[1].ID {
		t.Errorf("builds of after.drv = %+v, want build %d", got, bs[1].ID)
	} else if got[0].FailedDependencyBuildID != bs[0].ID {
		t.Errorf("builds of after.drv: failed_dependency_build_id = %d, want %d", got[0].FailedDependencyBuildID, bs[0].ID)
	}
	if got := getBuilds(t, ts.URL+"/api/v1/builds?drv_path="+url.QueryEscape("/nix/store/none.drv")); len(got) != 0 {
		t.Errorf("builds of an unknown .drv = %+v, want []", got)
	}

	for _, query := range []string{"", "?drv_path=relative.drv", "?drv_path=/nix/store/x", "?drv_path=/nix/store/x.drv&limit=0"} {
		code, body := request(t, http.MethodGet, ts.URL+"/api/v1/builds"+query, testToken, "")
		if code != http.StatusBadRequest {
			t.Errorf("GET /builds%s = %d, want 400", query, code)
		}
		if !strings.Contains(body, "invalid") {
			t.Errorf("GET /builds%s: body %q does not say what is invalid", query, body)
		}
	}
}
