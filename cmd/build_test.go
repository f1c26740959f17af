package cmd

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
)

func TestErrNeverPlacedNamesNeeds(t *testing.T) {
	b := db.Build{ID: 28, Name: "needs-bp", System: "x86_64-linux", Features: []string{"big-parallel"}, Status: db.BuildQueued}
	msg := errNeverPlaced(b).Error()
	for _, want := range []string{"build 28 (needs-bp) is queued", "system x86_64-linux", "features big-parallel", "gradient worker list"} {
		if !strings.Contains(msg, want) {
			t.Errorf("errNeverPlaced(queued) = %q, want it to contain %q", msg, want)
		}
	}

	b.Status = db.BuildFailed
	msg = errNeverPlaced(b).Error()
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
