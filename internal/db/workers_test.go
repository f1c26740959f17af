package db

import (
	"errors"
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
