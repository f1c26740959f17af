package cmd

import (
	"strings"
	"testing"

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
