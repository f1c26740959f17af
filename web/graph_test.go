package web

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler/sim"
)

func TestGraphEndpointLoadsInSimulator(t *testing.T) {
	ts, records, _, _ := newTestServer(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := records.CreateProject(db.Project{Org: "demo", Name: "graph", FlakeRef: "path:/src"}, now); err != nil {
		t.Fatal(err)
	}
	e, err := records.CreateEvaluation("demo", "graph", now)
	if err != nil {
		t.Fatal(err)
	}

	code, body := request(t, http.MethodGet, ts.URL+"/api/v1/evaluations/"+db.FormatID(e.ID)+"/graph", testToken, "")
	if code != http.StatusConflict || !strings.Contains(body, "no graph yet") {
		t.Errorf("GET graph of a queued evaluation = %d %s, want 409 saying it has no graph yet", code, body)
	}

	started, finished := now, now.Add(90*time.Second)
	builds := []db.Build{
		{DrvPath: "/nix/store/00000000000000000000000000000001-base.drv", Name: "base", System: "x86_64-linux",
			Outputs: map[string]string{"out": "/nix/store/00000000000000000000000000000001-base"}, Status: db.BuildCached, OutputSize: 5000},
		{DrvPath: "/nix/store/00000000000000000000000000000002-app.drv", Name: "app", System: "x86_64-linux",
			InputDrvs: []string{"/nix/store/00000000000000000000000000000001-base.drv"},
			Outputs:   map[string]string{"out": "/nix/store/00000000000000000000000000000002-app"},
			Status:    db.BuildSucceeded, OutputSize: 700, StartedAt: &started, FinishedAt: &finished},
	}
	if err := records.CreateBuilds(e.ID, builds); err != nil {
		t.Fatal(err)
	}
	e.Status = db.EvalSucceeded
	if err := records.PutEvaluation(e); err != nil {
		t.Fatal(err)
	}

	code, body = request(t, http.MethodGet, ts.URL+"/api/v1/evaluations/"+db.FormatID(e.ID)+"/graph", testToken, "")
	if code != http.StatusOK {
		t.Fatalf("GET graph = %d %s, want 200", code, body)
	}
	g, err := sim.LoadGraph(strings.NewReader(body))
	if err != nil {
		t.Fatalf("sim.LoadGraph(graph) = %v, want the file to load\n%s", err, body)
	}
	if len(g.Derivations) != 2 {
		t.Fatalf("loaded graph has %d derivations, want 2", len(g.Derivations))
	}
	for _, want := range []string{`"output_size": 700`, `"build_time_s": 90`, `"cached": true`, `"output_size": 5000`} {
		if !strings.Contains(body, want) {
			t.Errorf("graph %s does not contain %s", body, want)
		}
	}
}
