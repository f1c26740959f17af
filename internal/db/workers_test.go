package db

import (
	"errors"
	"math"
	"testing"
	"time"
)

func TestWorkerTokens(t *testing.T) {
	d := openTest(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := d.CreateWorker("builder-1", HashToken("secret"), now); err != nil {
		t.Fatalf("CreateWorker = %v", err)
	}
	if _, err := d.CreateWorker("builder-1", HashToken("other"), now); !errors.Is(err, ErrExists) {
		t.Errorf("CreateWorker(taken name) = %v, want ErrExists", err)
	}

	w, err := d.WorkerByToken("secret")
	if err != nil || w.Name != "builder-1" {
		t.Errorf("WorkerByToken(secret) = %q, %v, want builder-1", w.Name, err)
	}
	if w.TokenHash == "secret" || w.TokenHash != HashToken("secret") {
		t.Errorf("stored token hash = %q, want the SHA-256 of the token", w.TokenHash)
	}
	if _, err := d.WorkerByToken("wrong"); !errors.Is(err, ErrNotFound) {
		t.Errorf("WorkerByToken(wrong) = %v, want ErrNotFound", err)
	}

	if err := d.UpdateWorker("builder-1", func(w *Worker) { w.Builds++ }); err != nil {
		t.Fatalf("UpdateWorker = %v", err)
	}
	if err := d.EnsureWorker("local", now); err != nil {
		t.Fatalf("EnsureWorker = %v", err)
	}
	ws, err := d.ListWorkers()
	if err != nil || len(ws) != 2 || ws[0].Name != "builder-1" || ws[0].Builds != 1 || ws[1].Name != "local" {
		t.Errorf("ListWorkers = %+v, %v, want builder-1 with 1 build and local", ws, err)
	}

	if err := d.DeleteWorker("builder-1"); err != nil {
		t.Fatalf("DeleteWorker = %v", err)
	}
	if _, err := d.WorkerByToken("secret"); !errors.Is(err, ErrNotFound) {
		t.Errorf("WorkerByToken after DeleteWorker = %v, want ErrNotFound", err)
	}
	if err := d.UpdateWorker("builder-1", func(w *Worker) {}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateWorker after DeleteWorker = %v, want ErrNotFound", err)
	}
}

func TestWorkerSpeed(t *testing.T) {
	d := openTest(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := d.CreateWorker("plain", HashToken("a"), now); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateWorkerWithSpeed("fast", HashToken("b"), 2.5, now); err != nil {
		t.Fatal(err)
	}

	if w, err := d.GetWorker("plain"); err != nil || w.Speed != DefaultWorkerSpeed {
		t.Errorf("GetWorker(plain).Speed = %v, %v, want %v", w.Speed, err, DefaultWorkerSpeed)
	}
	if w, err := d.GetWorker("fast"); err != nil || w.Speed != 2.5 {
		t.Errorf("GetWorker(fast).Speed = %v, %v, want 2.5", w.Speed, err)
	}

	if err := d.SetWorkerSpeed("plain", 0.5); err != nil {
		t.Fatalf("SetWorkerSpeed(plain, 0.5) = %v", err)
	}
	if w, _ := d.GetWorker("plain"); w.Speed != 0.5 {
		t.Errorf("Speed after SetWorkerSpeed = %v, want 0.5", w.Speed)
	}
	if err := d.SetWorkerSpeed("gone", 2); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetWorkerSpeed(unknown) = %v, want ErrNotFound", err)
	}

	for _, bad := range []float64{0, -1, math.NaN(), math.Inf(1)} {
		if err := d.SetWorkerSpeed("plain", bad); err == nil {
			t.Errorf("SetWorkerSpeed(%v) = nil, want an error", bad)
		}
		if _, err := d.CreateWorkerWithSpeed("bad", HashToken("c"), bad, now); err == nil {
			t.Errorf("CreateWorkerWithSpeed(%v) = nil, want an error", bad)
		}
	}
	if w, _ := d.GetWorker("plain"); w.Speed != 0.5 {
		t.Errorf("Speed after rejected updates = %v, want 0.5", w.Speed)
	}
	if _, err := d.GetWorker("bad"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetWorker(bad) = %v, want ErrNotFound after rejected creates", err)
	}
}

func TestWorkerEffectiveSpeed(t *testing.T) {
	if got := (Worker{}).EffectiveSpeed(); got != DefaultWorkerSpeed {
		t.Errorf("EffectiveSpeed of a record without speed = %v, want %v", got, DefaultWorkerSpeed)
	}
	if got := (Worker{Speed: 3}).EffectiveSpeed(); got != 3 {
		t.Errorf("EffectiveSpeed(3) = %v, want 3", got)
	}
}
