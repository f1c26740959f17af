package cmd

import (
	"testing"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

func TestNoWorkerWaits(t *testing.T) {
	arm := "waiting for a worker with system aarch64-linux; fails at 2026-12-05T03:00:00Z unless one connects"
	kvm := "waiting for a worker with feature kvm; fails at 2026-12-05T03:00:00Z unless one connects"
	bs := []db.Build{
		{Status: db.BuildQueued, WaitingReason: string(scheduler.NoWorker), Waiting: arm},
		{Status: db.BuildQueued, WaitingReason: string(scheduler.NoWorker), Waiting: kvm},
		{Status: db.BuildQueued, WaitingReason: string(scheduler.NoWorker), Waiting: arm},
		{Status: db.BuildQueued, WaitingReason: string(scheduler.InputsBuilding), Waiting: "inputs building"},
		{Status: db.BuildFailed, WaitingReason: string(scheduler.NoWorker), Waiting: arm},
	}
	want := "\n  2 builds: " + arm + "\n  1 build: " + kvm
	if got := noWorkerWaits(bs); got != want {
		t.Errorf("noWorkerWaits = %q, want %q", got, want)
	}
	if got := noWorkerWaits(bs[3:]); got != "" {
		t.Errorf("noWorkerWaits without no-worker waits = %q, want empty", got)
	}
}
