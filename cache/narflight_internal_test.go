package cache

import (
	"errors"
	"path/filepath"
	"testing"
)

// A reader that arrives after a download ended gets the download's
// outcome, not the error of opening a file that is gone.
func TestFlightReaderAfterEnd(t *testing.T) {
	errUpstream := errors.New("upstream cut the body")
	gone := filepath.Join(t.TempDir(), "removed.nar.xz")
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"failed download", errUpstream, errUpstream},
		{"evicted path", nil, ErrNotFound},
	}
	for _, tc := range tests {
		f := &narFlight{fileName: "removed.nar.xz", path: gone, done: true, err: tc.err, changed: make(chan struct{})}
		_, err := f.newReader(t.Context())
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: newReader = %v, want %v", tc.name, err, tc.want)
		}
	}
}
