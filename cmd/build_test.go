package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/web/client"
)

func TestErrNeverPlacedNamesNeeds(t *testing.T) {
	b := db.Build{ID: 28, Name: "needs-bp", System: "x86_64-linux", Features: []string{"big-parallel"}, Status: db.BuildQueued}
	msg := errNeverPlaced(context.Background(), nil, b).Error()
	for _, want := range []string{"build 28 (needs-bp) is queued", "system x86_64-linux", "features big-parallel", "gradient worker list"} {
		if !strings.Contains(msg, want) {
			t.Errorf("errNeverPlaced(queued) = %q, want it to contain %q", msg, want)
		}
	}

	b.Status = db.BuildFailed
	msg = errNeverPlaced(context.Background(), nil, b).Error()
	if want := "was never placed on a worker: it is failed"; !strings.Contains(msg, want) {
		t.Errorf("errNeverPlaced(failed) = %q, want it to contain %q", msg, want)
	}
}

func TestPrintEvaluationLogHint(t *testing.T) {
	started := time.Date(2026, 12, 4, 23, 5, 12, 0, time.UTC)
	e := db.Evaluation{ID: 1, Org: "t", Project: "f1", Status: db.EvalFailed, Results: []db.EntryPointResult{
		{Attr: "packages.x86_64-linux.fail", BuildID: 2},
		{Attr: "packages.aarch64-linux.arm", BuildID: 10},
	}}
	bs := []db.Build{
		{ID: 2, Status: db.BuildFailed, Error: "builder failed with exit code 3", StartedAt: &started},
		{ID: 10, Status: db.BuildFailed, Error: "no worker for system aarch64-linux"},
	}
	var out bytes.Buffer
	printEvaluation(&out, e, bs)

	if !strings.Contains(out.String(), "see: gradient build log 2\n") {
		t.Errorf("printEvaluation output lacks the log hint of started build 2:\n%s", out.String())
	}
	if strings.Contains(out.String(), "gradient build log 10") {
		t.Errorf("printEvaluation output points at the log of build 10, which never started:\n%s", out.String())
	}
}

// fakeBuildsAPI serves GET /api/v1/builds/ID and GET /api/v1/builds?drv_path=
// from bs, the newest build last.
func fakeBuildsAPI(t *testing.T, bs ...db.Build) *client.Client {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/builds" {
			out := []db.Build{}
			for i := len(bs) - 1; i >= 0; i-- {
				if bs[i].DrvPath == r.URL.Query().Get("drv_path") {
					out = append(out, bs[i])
				}
			}
			json.NewEncoder(w).Encode(out)
			return
		}
		for _, b := range bs {
			if r.URL.Path == "/api/v1/builds/"+db.FormatID(b.ID) {
				json.NewEncoder(w).Encode(b)
				return
			}
		}
		w.WriteHeader(http.StatusNotFound)
		json.NewEncoder(w).Encode(map[string]string{"error": "not found"})
	}))
	t.Cleanup(srv.Close)
	cl, err := client.New(srv.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestResolveBuildByDerivation(t *testing.T) {
	const drv = "/nix/store/km0ayqg8542pkg4p1w5734gc8x16i0j3-broken-leaf.drv"
	cl := fakeBuildsAPI(t, db.Build{ID: 14, DrvPath: drv}, db.Build{ID: 34, DrvPath: drv})
	ctx := context.Background()

	b, err := resolveBuild(ctx, cl, drv)
	if err != nil || b.ID != 34 {
		t.Errorf("resolveBuild(%s) = build %d, %v; want the newest, 34", drv, b.ID, err)
	}
	b, err = resolveBuild(ctx, cl, "14")
	if err != nil || b.ID != 14 {
		t.Errorf("resolveBuild(14) = build %d, %v; want 14", b.ID, err)
	}

	_, err = resolveBuild(ctx, cl, "/nix/store/none.drv")
	if err == nil || !strings.Contains(err.Error(), "no build of derivation /nix/store/none.drv") {
		t.Errorf("resolveBuild(unknown .drv) = %v, want no build of that derivation", err)
	}
	for _, arg := range []string{"x.drv", "/nix/store/x", "0", "twelve"} {
		if _, err := resolveBuild(ctx, cl, arg); err == nil || !strings.Contains(err.Error(), "invalid") {
			t.Errorf("resolveBuild(%q) = %v, want an invalid-argument error", arg, err)
		}
	}
}

func TestWhyDependencyFailedNeverRan(t *testing.T) {
	started := time.Date(2026, 12, 4, 23, 5, 12, 0, time.UTC)
	failed := db.Build{ID: 14, Name: "broken-leaf", DrvPath: "/nix/store/b-broken-leaf.drv", Status: db.BuildFailed,
		Error: "builder failed with exit code 3\nlast lines", StartedAt: &started, Placement: &db.Placement{JobID: "job-3", WorkerID: "local"}}
	// A later link of the job whose first link failed has its placement.
	after := db.Build{ID: 15, Name: "after-broken", Status: db.BuildDependencyFailed, FailedDependency: failed.DrvPath,
		FailedDependencyBuildID: 14, Placement: &db.Placement{JobID: "job-3", WorkerID: "local"}}
	cl := fakeBuildsAPI(t, failed, after)

	err := errNotRun(context.Background(), cl, after)
	if err == nil {
		t.Fatal("errNotRun(dependency_failed) = nil, want that it never ran")
	}
	want := "build 15 (after-broken) never ran: its input /nix/store/b-broken-leaf.drv (build 14) failed: builder failed with exit code 3; 'gradient build why 14' shows that build"
	if err.Error() != want {
		t.Errorf("errNotRun(dependency_failed) = %q, want %q", err, want)
	}
	if err := errNotRun(context.Background(), cl, failed); err != nil {
		t.Errorf("errNotRun(failed after it ran) = %v, want nil: its placement explains it", err)
	}
}

func TestWhyAdoptedFailureNamesBuildThatRan(t *testing.T) {
	started := time.Date(2026, 12, 4, 23, 5, 12, 0, time.UTC)
	ran := db.Build{ID: 14, EvalID: 1, Name: "broken-leaf", DrvPath: "/nix/store/b-broken-leaf.drv", Status: db.BuildFailed,
		StartedAt: &started, Placement: &db.Placement{JobID: "job-3", WorkerID: "local"}}
	adopted := db.Build{ID: 42, EvalID: 3, Name: "broken-leaf", DrvPath: ran.DrvPath, Status: db.BuildFailed}
	cl := fakeBuildsAPI(t, ran, adopted)

	err := errNotRun(context.Background(), cl, adopted)
	want := "build 42 (broken-leaf) was never placed on a worker: it is failed, as build 14 of evaluation 1 found; 'gradient build why 14' shows that build"
	if err == nil || err.Error() != want {
		t.Errorf("errNotRun(adopted failure) = %v, want %q", err, want)
	}
}

func TestWhyRequeuedFailureNamesLastJob(t *testing.T) {
	b := db.Build{ID: 89, Name: "slow-feat", Status: db.BuildFailed, Error: "no worker for system x86_64-linux with features [f]: connect a worker that has them, then evaluate again",
		Placement: &db.Placement{JobID: "job-7", WorkerID: "w1"}}
	err := errNotRun(context.Background(), nil, b)
	want := "build 89 (slow-feat) failed without a worker running it to the end: no worker for system x86_64-linux with features [f]: connect a worker that has them, then evaluate again; its last job, job-7 on worker w1, ended without building it"
	if err == nil || err.Error() != want {
		t.Errorf("errNotRun(failed after requeue) = %v, want %q", err, want)
	}
}

func TestPrintEvaluationNamesFailedInput(t *testing.T) {
	started := time.Date(2026, 12, 4, 23, 5, 12, 0, time.UTC)
	e := db.Evaluation{ID: 1, Org: "t", Project: "a", Status: db.EvalBuilding, Results: []db.EntryPointResult{
		{Attr: "packages.x86_64-linux.chain", BuildID: 12},
		{Attr: "packages.x86_64-linux.kvm", BuildID: 18},
	}}
	bs := []db.Build{
		{ID: 10, DrvPath: "/nix/store/c-chain-1.drv", Status: db.BuildFailed, Error: "no worker for system x86_64-linux: connect a worker that has it, then evaluate again"},
		{ID: 12, Status: db.BuildDependencyFailed, FailedDependency: "/nix/store/c-chain-1.drv", FailedDependencyBuildID: 10},
		{ID: 14, DrvPath: "/nix/store/l-leaf.drv", Status: db.BuildFailed, Error: "exit code 3", StartedAt: &started},
		{ID: 18, Status: db.BuildQueued, Waiting: "waiting for input /nix/store/k-needs-kvm.drv (build 17), which is waiting for a worker"},
	}
	var out bytes.Buffer
	printEvaluation(&out, e, bs)

	for _, want := range []string{
		"packages.x86_64-linux.chain: build 12 not run because dependency /nix/store/c-chain-1.drv (build 10) failed: no worker for system x86_64-linux: connect a worker that has it, then evaluate again\n",
		"packages.x86_64-linux.kvm: build 18 waiting for input /nix/store/k-needs-kvm.drv (build 17), which is waiting for a worker\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("printEvaluation output lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "gradient build log 10") {
		t.Errorf("printEvaluation output points at the log of build 10, which never started:\n%s", out.String())
	}
}
