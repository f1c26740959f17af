package db

import (
	"testing"

	"github.com/gradient-ci/gradient/scheduler"
)

// A speed stored before speeds had bounds is clamped into them, so the
// scheduler never divides an estimate by a vanishing speed.
func TestEffectiveSpeedBounds(t *testing.T) {
	tests := []struct {
		stored, want float64
	}{
		{0, DefaultWorkerSpeed},
		{2.5, 2.5},
		{1e-320, scheduler.MinSpeed},
		{1e308, scheduler.MaxSpeed},
	}
	for _, tt := range tests {
		if got := (Worker{Speed: tt.stored}).EffectiveSpeed(); got != tt.want {
			t.Errorf("EffectiveSpeed of a record with speed %v = %v, want %v", tt.stored, got, tt.want)
		}
	}
	for _, bad := range []float64{1e-320, 0, -1, 1e308} {
		if err := ValidateWorkerSpeed(bad); err == nil {
			t.Errorf("ValidateWorkerSpeed(%v) = nil, want an error", bad)
		}
	}
}
