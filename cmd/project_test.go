package cmd

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/spf13/cobra"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/web/client"
)

func TestWaitForEvaluationInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The node reports a queued evaluation, and the first poll cancels the
	// context as Ctrl-C would.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/evaluations/16" {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(db.Evaluation{ID: 16, Status: db.EvalQueued})
		cancel()
	}))
	defer srv.Close()

	cl, err := client.New(srv.URL, "token")
	if err != nil {
		t.Fatal(err)
	}
	cmd := &cobra.Command{}
	cmd.SetContext(ctx)
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetOut(&bytes.Buffer{})

	err = waitForEvaluation(cmd, &clientFlags{}, cl, 16)
	if err == nil {
		t.Fatal("waitForEvaluation(interrupted) = nil, want an error")
	}
	if want := "stopped waiting for evaluation 16, which goes on running on the node"; err.Error() != want {
		t.Errorf("waitForEvaluation(interrupted) = %q, want %q", err, want)
	}
}
