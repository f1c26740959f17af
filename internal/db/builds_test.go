package db

import (
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func TestBuildsOfDerivationNewestFirst(t *testing.T) {
	d := openTest(t)
	const a, b = "/nix/store/a.drv", "/nix/store/a.drv-not-a"
	for evalID := uint64(1); evalID <= 3; evalID++ {
		if err := d.CreateBuilds(evalID, []Build{{DrvPath: a, Status: BuildQueued}, {DrvPath: b, Status: BuildQueued}}); err != nil {
			t.Fatal(err)
		}
	}

	got, err := d.BuildsOfDerivation(a, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("BuildsOfDerivation(a) = %d builds, want 3", len(got))
	}
	for i, want := range []uint64{3, 2, 1} {
		if got[i].EvalID != want || got[i].DrvPath != a {
			t.Errorf("BuildsOfDerivation(a)[%d] = evaluation %d %s, want evaluation %d %s", i, got[i].EvalID, got[i].DrvPath, want, a)
		}
	}
	if got, _ := d.BuildsOfDerivation(a, 1); len(got) != 1 || got[0].EvalID != 3 {
		t.Errorf("BuildsOfDerivation(a, 1) = %+v, want the build of evaluation 3", got)
	}

	found, err := d.FindBuild(2, a)
	if err != nil || found.EvalID != 2 || found.DrvPath != a {
		t.Errorf("FindBuild(2, a) = %+v, %v; want the build of evaluation 2", found, err)
	}
	if _, err := d.FindBuild(9, a); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindBuild(9, a) = %v, want ErrNotFound", err)
	}

	if err := d.DeleteBuilds(3); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.BuildsOfDerivation(a, 0); len(got) != 2 || got[0].EvalID != 2 {
		t.Errorf("BuildsOfDerivation(a) after DeleteBuilds(3) = %+v, want evaluations 2 and 1", got)
	}
	if got, _ := d.BuildsOfDerivation("/nix/store/none.drv", 0); len(got) != 0 {
		t.Errorf("BuildsOfDerivation(unknown) = %+v, want none", got)
	}
}

func TestOpenIndexesOlderBuilds(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateBuilds(1, []Build{{DrvPath: "/nix/store/a.drv", Status: BuildQueued}}); err != nil {
		t.Fatal(err)
	}
	// Remove the index, as in a database written before it existed.
	err = d.bdb.DropPrefix([]byte("drvbuild/"))
	if err == nil {
		err = d.bdb.Update(func(txn *badger.Txn) error { return txn.Delete(drvIndexDoneKey) })
	}
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := d.BuildsOfDerivation("/nix/store/a.drv", 0); len(got) != 0 {
		t.Fatalf("BuildsOfDerivation after dropping the index = %d builds, want 0", len(got))
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if got, err := d.BuildsOfDerivation("/nix/store/a.drv", 0); err != nil || len(got) != 1 {
		t.Errorf("BuildsOfDerivation after reopening = %d builds, %v; want 1", len(got), err)
	}
}

func TestPutBuildClearsStaleFields(t *testing.T) {
	d := openTest(t)
	until := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	bs := []Build{{DrvPath: "/nix/store/a.drv", Status: BuildBuilding, WorkerID: "w1"}}
	if err := d.CreateBuilds(1, bs); err != nil {
		t.Fatal(err)
	}
	b := bs[0]

	// A build queued again after its worker left has a wait and no worker.
	b.Status = BuildQueued
	b.SetWait(Wait{Reason: "no-worker", Text: "waiting for a worker", Until: until})
	if err := d.PutBuild(b); err != nil {
		t.Fatal(err)
	}
	got, _ := d.GetBuild(b.ID)
	if got.WorkerID != "" {
		t.Errorf("queued build: worker_id = %q, want empty", got.WorkerID)
	}
	if got.WaitingReason != "no-worker" || got.WaitingUntil == nil || !got.WaitingUntil.Equal(until) {
		t.Errorf("queued build: waiting_reason %q until %v, want no-worker until %v", got.WaitingReason, got.WaitingUntil, until)
	}

	// Once it failed, it waits for nothing.
	b.Status = BuildFailed
	if err := d.PutBuild(b); err != nil {
		t.Fatal(err)
	}
	got, _ = d.GetBuild(b.ID)
	if got.Waiting != "" || got.WaitingReason != "" || got.WaitingUntil != nil {
		t.Errorf("failed build: waiting %q, reason %q, until %v; want all empty", got.Waiting, got.WaitingReason, got.WaitingUntil)
	}
}
