package protocol

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
)

// TestSlotFreeWhenResultArrives runs jobs back to back on a worker with one
// slot. Each offer follows the result of the job before, so the worker must
// have freed the slot by the time the node reads that result.
func TestSlotFreeWhenResultArrives(t *testing.T) {
	th := newTestHub(t, nil)
	w := &fakeWorker{
		evaluate: func(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error) {
			return EvalResult{}, nil
		},
		build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
			return BuildResult{}, nil
		},
	}
	servePipe(t, th, "w1", w, ServeConfig{MaxJobs: 1})
	rw := th.waitJoined(t)

	for i := range 300 {
		if _, err := rw.Evaluate(context.Background(), EvalRequest{FlakeRef: "path:/src", ListOnly: true}, io.Discard); err != nil {
			t.Fatalf("Evaluate %d = %v, want success", i, err)
		}
		if _, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/x.drv"}, io.Discard, &memSink{}); err != nil {
			t.Fatalf("Build %d = %v, want success", i, err)
		}
	}
}

// TestDeclinedJobError checks that a job the worker declines returns an
// error wrapping ErrJobDeclined with the worker's reason, and not a
// JobError, so the node can offer it again.
func TestDeclinedJobError(t *testing.T) {
	th := newTestHub(t, nil)
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		started <- struct{}{}
		<-release
		return BuildResult{}, nil
	}}
	servePipe(t, th, "w1", w, ServeConfig{MaxJobs: 1})
	rw := th.waitJoined(t)

	first := make(chan error, 1)
	go func() {
		_, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/a.drv"}, io.Discard, &memSink{})
		first <- err
	}()
	<-started

	_, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/b.drv"}, io.Discard, &memSink{})
	if !errors.Is(err, ErrJobDeclined) {
		t.Errorf("Build on a busy worker = %v, want an error wrapping ErrJobDeclined", err)
	}
	var je *JobError
	if errors.As(err, &je) {
		t.Errorf("Build on a busy worker = %v, a *JobError, want a decline only", err)
	}
	if err == nil || !strings.Contains(err.Error(), "all 1 job slots are busy") {
		t.Errorf("Build on a busy worker = %v, want the worker's reason", err)
	}

	close(release)
	if err := <-first; err != nil {
		t.Errorf("first Build = %v, want success", err)
	}
}
