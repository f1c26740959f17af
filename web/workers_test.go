package web

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/internal/db"
)

// fakeWorkers keeps the speed of each registered worker. The worker
// "local" exists and has its speed from the configuration.
type fakeWorkers struct {
	speeds map[string]float64
}

func (f *fakeWorkers) Register(_ context.Context, name string, speed float64) (string, error) {
	if _, ok := f.speeds[name]; ok {
		return "", fmt.Errorf("worker %q: %w", name, db.ErrExists)
	}
	f.speeds[name] = speed
	return "token-" + name, nil
}

func (f *fakeWorkers) SetSpeed(_ context.Context, name string, speed float64) error {
	if name == "local" {
		return fmt.Errorf("%w: give gradient serve --worker-speed", ErrSpeedFromConfig)
	}
	if _, ok := f.speeds[name]; !ok {
		return fmt.Errorf("worker %q: %w", name, db.ErrNotFound)
	}
	f.speeds[name] = speed
	return nil
}

func (f *fakeWorkers) List(context.Context) ([]WorkerInfo, error) { return nil, nil }
func (f *fakeWorkers) Revoke(context.Context, string) error       { return nil }

func newWorkersServer(t *testing.T) (*httptest.Server, *fakeWorkers) {
	t.Helper()
	records, err := db.Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { records.Close() })
	workers := &fakeWorkers{speeds: map[string]float64{"local": 1}}
	ts := httptest.NewServer(New(Config{DB: records, Evaluator: &fakeEvaluator{}, Workers: workers, AdminToken: testToken}))
	t.Cleanup(ts.Close)
	return ts, workers
}

func TestRegisterWorkerSpeed(t *testing.T) {
	ts, workers := newWorkersServer(t)
	tests := []struct {
		name, body string
		wantStatus int
		wantError  string // part of the error body
	}{
		{"default speed", `{"name": "plain"}`, http.StatusCreated, ""},
		{"given speed", `{"name": "fast", "speed": 2.5}`, http.StatusCreated, ""},
		{"negative speed", `{"name": "bad", "speed": -1}`, http.StatusBadRequest, "worker speed -1 is out of range"},
	}
	for _, tt := range tests {
		status, body := request(t, http.MethodPost, ts.URL+"/api/v1/workers", testToken, tt.body)
		if status != tt.wantStatus {
			t.Errorf("%s: POST /workers %s = %d %s, want %d", tt.name, tt.body, status, body, tt.wantStatus)
			continue
		}
		if tt.wantError != "" && !strings.Contains(body, tt.wantError) {
			t.Errorf("%s: POST /workers %s = %s, want an error containing %q", tt.name, tt.body, body, tt.wantError)
		}
	}
	if got := workers.speeds["plain"]; got != 1 {
		t.Errorf("speed of plain = %v, want 1", got)
	}
	if got := workers.speeds["fast"]; got != 2.5 {
		t.Errorf("speed of fast = %v, want 2.5", got)
	}
	if _, ok := workers.speeds["bad"]; ok {
		t.Errorf("worker bad was registered despite its negative speed")
	}
}

func TestUpdateWorkerSpeed(t *testing.T) {
	ts, workers := newWorkersServer(t)
	workers.speeds["w1"] = 1
	tests := []struct {
		name, worker, body string
		wantStatus         int
		wantError          string
	}{
		{"valid", "w1", `{"speed": 3}`, http.StatusNoContent, ""},
		{"missing speed", "w1", `{}`, http.StatusBadRequest, "speed is missing"},
		{"zero speed", "w1", `{"speed": 0}`, http.StatusBadRequest, "worker speed 0 is out of range"},
		{"unknown field", "w1", `{"speed": 2, "slots": 4}`, http.StatusBadRequest, "slots"},
		{"unknown worker", "nobody", `{"speed": 2}`, http.StatusNotFound, `worker \"nobody\": not found`},
		{"in-process worker", "local", `{"speed": 2}`, http.StatusConflict, "--worker-speed"},
	}
	for _, tt := range tests {
		status, body := request(t, http.MethodPatch, ts.URL+"/api/v1/workers/"+tt.worker, testToken, tt.body)
		if status != tt.wantStatus {
			t.Errorf("%s: PATCH /workers/%s %s = %d %s, want %d", tt.name, tt.worker, tt.body, status, body, tt.wantStatus)
			continue
		}
		if tt.wantError != "" && !strings.Contains(body, tt.wantError) {
			t.Errorf("%s: PATCH /workers/%s %s = %s, want an error containing %q", tt.name, tt.worker, tt.body, body, tt.wantError)
		}
	}
	if got := workers.speeds["w1"]; got != 3 {
		t.Errorf("speed of w1 = %v, want 3 from the valid request only", got)
	}
	if got := workers.speeds["local"]; got != 1 {
		t.Errorf("speed of local = %v, want 1 unchanged", got)
	}
}
