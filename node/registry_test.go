package node

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/web"
)

func TestRegistryWorkerSpeed(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, driverConfig{}, func(records *db.DB) {
		// A record written before speeds were stored has none.
		if err := records.EnsureWorker(localWorkerID, time.Now()); err != nil {
			t.Fatal(err)
		}
		if err := records.UpdateWorker(localWorkerID, func(w *db.Worker) { w.Speed = 0 }); err != nil {
			t.Fatal(err)
		}
	})
	r := &workerRegistry{db: h.db, hub: h.hub, now: h.clock.Now}

	if _, err := r.Register(ctx, "fast", 2.5); err != nil {
		t.Fatalf("Register(fast, 2.5) = %v", err)
	}
	if _, err := r.Register(ctx, "bad", 0); err == nil {
		t.Errorf("Register(bad, 0) = nil error, want an invalid speed")
	}
	h.connect("anon", instantWorker(graphResult()), protocol.ServeConfig{})

	speeds := func() map[string]float64 {
		ws, err := r.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]float64{}
		for _, w := range ws {
			out[w.Name] = w.Speed
		}
		return out
	}
	got := speeds()
	if got["fast"] != 2.5 {
		t.Errorf("listed speed of fast = %v, want 2.5", got["fast"])
	}
	if got["anon"] != 1 {
		t.Errorf("listed speed of a connected worker without a record = %v, want 1", got["anon"])
	}
	if got[localWorkerID] != 1 {
		t.Errorf("listed speed of a record without a speed = %v, want 1", got[localWorkerID])
	}

	if err := r.SetSpeed(ctx, "fast", 3); err != nil {
		t.Fatalf("SetSpeed(fast, 3) = %v", err)
	}
	if got := speeds()["fast"]; got != 3 {
		t.Errorf("listed speed of fast after SetSpeed = %v, want 3", got)
	}
	if err := r.SetSpeed(ctx, localWorkerID, 2); !errors.Is(err, web.ErrSpeedFromConfig) {
		t.Errorf("SetSpeed(local) = %v, want ErrSpeedFromConfig", err)
	}
	if err := r.SetSpeed(ctx, "nobody", 2); !errors.Is(err, db.ErrNotFound) {
		t.Errorf("SetSpeed(unknown) = %v, want ErrNotFound", err)
	}
}

// The in-process worker's name can be neither registered, which would
// give a remote worker its identity, nor revoked, which would stop the
// node's own worker.
func TestRegistryInProcessName(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t, driverConfig{})
	r := &workerRegistry{db: h.db, hub: h.hub, now: h.clock.Now}

	if _, err := r.Register(ctx, localWorkerID, 1); !errors.Is(err, web.ErrInProcessWorker) {
		t.Errorf("Register(%s) = %v, want an error wrapping web.ErrInProcessWorker", localWorkerID, err)
	}
	if err := r.Revoke(ctx, localWorkerID); !errors.Is(err, web.ErrInProcessWorker) {
		t.Errorf("Revoke(%s) = %v, want an error wrapping web.ErrInProcessWorker", localWorkerID, err)
	}
	if _, err := r.Register(ctx, "w1", 1); err != nil {
		t.Errorf("Register(w1) = %v, want success", err)
	}
}
