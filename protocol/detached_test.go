package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// cutDuringBuild runs Serve with cfg against a node played by the test,
// which offers one build and closes the connection while the build runs.
// The build runs until its context ends or, once Serve returned, until
// the test releases it. cutDuringBuild returns the build's context error
// joined with the error of a log write at its end.
func cutDuringBuild(t *testing.T, cfg ServeConfig) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	started := make(chan struct{})
	release := make(chan struct{})
	ended := make(chan error, 1)
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		close(started)
		select {
		case <-release:
		case <-ctx.Done():
		}
		// A detached build still writes its log after the connection
		// ended: the write must not fail.
		_, logErr := fmt.Fprintln(log, "build output")
		ended <- errors.Join(ctx.Err(), logErr)
		return BuildResult{}, nil
	}}
	cfg.Setup = func(context.Context, *Welcome) (Worker, error) { return w, nil }
	cfg.Systems = []string{"x86_64-linux"}
	cfg.SpoolDir = t.TempDir()

	nodeEnd, workerEnd := Pipe()
	served := make(chan error, 1)
	go func() { served <- Serve(ctx, workerEnd, cfg) }()

	if _, err := nodeEnd.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}
	welcome := &Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: 10000, LeaseMillis: 30000, CachePath: "/cache/main"}
	if err := nodeEnd.Write(ctx, welcome); err != nil {
		t.Fatal(err)
	}
	if err := nodeEnd.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: "/nix/store/x.drv"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the build did not start within 30s")
	}
	nodeEnd.Close(websocket.StatusGoingAway, "connection cut")

	select {
	case <-served:
	case <-ctx.Done():
		t.Fatal("Serve did not return within 30s of the cut")
	}
	close(release)
	return <-ended
}

// TestServeDetachedBuildOutlivesSession checks that with
// ServeConfig.Detached a build goes on after its connection ends and can
// write its log, while Serve returns without waiting for it.
func TestServeDetachedBuildOutlivesSession(t *testing.T) {
	var detached DetachedBuilds
	err := cutDuringBuild(t, ServeConfig{Detached: &detached})
	if err != nil {
		t.Errorf("detached build ended with %v, want its context alive and its log writable", err)
	}
	detached.Wait()
}

// TestServeCancelsBuildWithoutDetached checks that without
// ServeConfig.Detached the end of the connection cancels the build.
func TestServeCancelsBuildWithoutDetached(t *testing.T) {
	err := cutDuringBuild(t, ServeConfig{})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("build ended with %v, want context.Canceled", err)
	}
}

// TestHeartbeatCountsDetachedBuilds checks that a session's heartbeats
// count a build that went on after an earlier session of the worker ended,
// and count it once when the node offers the same derivation again.
func TestHeartbeatCountsDetachedBuilds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	release := make(chan struct{})
	started := make(chan string, 4)
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		started <- req.DrvPath
		select {
		case <-release:
		case <-ctx.Done():
		}
		return BuildResult{}, nil
	}}
	detached := &DetachedBuilds{}
	cfg := ServeConfig{
		Detached: detached,
		Setup:    func(context.Context, *Welcome) (Worker, error) { return w, nil },
		Systems:  []string{"x86_64-linux"},
		MaxJobs:  2,
		SpoolDir: t.TempDir(),
	}
	session := func() Conn { return startSession(ctx, t, cfg, 20) }
	// nextHeartbeat reads until a heartbeat arrives.
	nextHeartbeat := func(c Conn) *Heartbeat {
		for {
			m, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read heartbeat: %v", err)
			}
			if hb, ok := m.(*Heartbeat); ok {
				return hb
			}
		}
	}
	const drv = "/nix/store/00000000000000000000000000000000-x.drv"

	first := session()
	if err := first.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: drv}}); err != nil {
		t.Fatal(err)
	}
	<-started
	first.Close(websocket.StatusGoingAway, "connection cut")

	second := session()
	if hb := nextHeartbeat(second); hb.RunningJobs != 1 {
		t.Errorf("after the cut, RunningJobs = %d, want 1 for the detached build", hb.RunningJobs)
	}
	if err := second.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: drv}}); err != nil {
		t.Fatal(err)
	}
	<-started
	// Once the worker accepted the offer, its heartbeats count the
	// derivation once.
	for accepted := false; ; {
		m, err := second.Read(ctx)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		switch m := m.(type) {
		case *JobAccept:
			accepted = true
		case *Heartbeat:
			if accepted && m.RunningJobs != 1 {
				t.Fatalf("with the derivation offered again, RunningJobs = %d, want 1", m.RunningJobs)
			}
		}
		if accepted {
			break
		}
	}
	if hb := nextHeartbeat(second); hb.RunningJobs != 1 {
		t.Errorf("with the derivation offered again, RunningJobs = %d, want 1", hb.RunningJobs)
	}
	close(release)
	detached.Wait()
	// The offered build ends too; then nothing runs.
	for {
		if hb := nextHeartbeat(second); hb.RunningJobs == 0 {
			break
		}
	}
}

// TestDetachedOutputReachesNextJob checks that what a build writes after
// its connection ended reaches the log of the derivation's next job, on
// the worker's next connection.
func TestDetachedOutputReachesNextJob(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	cut := make(chan struct{})
	started := make(chan struct{})
	ended := make(chan struct{})
	calls := 0
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		calls++
		if calls > 1 {
			return BuildResult{}, nil
		}
		defer close(ended)
		fmt.Fprintln(log, "before the cut")
		close(started)
		<-cut
		fmt.Fprintln(log, "after the cut")
		return BuildResult{}, nil
	}}
	cfg := ServeConfig{
		Detached: &DetachedBuilds{},
		Setup:    func(context.Context, *Welcome) (Worker, error) { return w, nil },
		Systems:  []string{"x86_64-linux"},
		SpoolDir: t.TempDir(),
	}
	session := func() Conn { return startSession(ctx, t, cfg, 60000) }
	// jobLog reads c until the result of job and returns the job's log.
	jobLog := func(c Conn, job uint64) string {
		var log strings.Builder
		for {
			m, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read: %v", err)
			}
			switch m := m.(type) {
			case *LogChunk:
				log.Write(m.Data)
			case *JobResult:
				return log.String()
			}
		}
	}
	const drv = "/nix/store/00000000000000000000000000000000-x.drv"

	first := session()
	if err := first.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: drv}}); err != nil {
		t.Fatal(err)
	}
	<-started
	first.Close(websocket.StatusGoingAway, "connection cut")
	close(cut)
	<-ended

	second := session()
	if err := second.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: drv}}); err != nil {
		t.Fatal(err)
	}
	log := jobLog(second, 1)
	if !strings.Contains(log, "after the cut") || !strings.Contains(log, "connection to the node was down") {
		t.Errorf("log of the next job = %q, want the output written after the cut, under a header", log)
	}
	if strings.Contains(log, "before the cut") {
		t.Errorf("log of the next job = %q, want only what the node did not get", log)
	}
}

// startSession starts Serve with cfg over a Pipe, replies to its Hello with a
// Welcome that sets the heartbeat interval to heartbeatMillis, and returns the
// node's end.
func startSession(ctx context.Context, t *testing.T, cfg ServeConfig, heartbeatMillis int64) Conn {
	t.Helper()
	nodeEnd, workerEnd := Pipe()
	go Serve(ctx, workerEnd, cfg)
	if _, err := nodeEnd.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}
	welcome := &Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: heartbeatMillis, LeaseMillis: 30000, CachePath: "/cache/main"}
	if err := nodeEnd.Write(ctx, welcome); err != nil {
		t.Fatal(err)
	}
	return nodeEnd
}

// TestHelloReportsDetachedBuilds checks that a worker's Hello lists the
// builds that went on after an earlier connection ended: while they run,
// and after they succeeded until a job of the derivation takes them up.
// A build whose upload failed for want of a connection succeeded too. A
// build that failed after its connection ended is not listed.
func TestHelloReportsDetachedBuilds(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	const (
		okDrv     = "/nix/store/00000000000000000000000000000000-ok.drv"
		failedDrv = "/nix/store/11111111111111111111111111111111-failed.drv"
		uploadDrv = "/nix/store/22222222222222222222222222222222-upload.drv"
	)
	release := make(chan struct{})
	started := make(chan string, 4)
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		started <- req.DrvPath
		select {
		case <-release:
		case <-ctx.Done():
			return BuildResult{}, ctx.Err()
		}
		switch req.DrvPath {
		case failedDrv:
			return BuildResult{}, &BuildError{Message: "builder failed"}
		case uploadDrv:
			_, err := nars.HasPath(ctx, "/nix/store/22222222222222222222222222222222-upload")
			return BuildResult{}, err
		}
		return BuildResult{}, nil
	}}
	detached := &DetachedBuilds{}
	cfg := ServeConfig{
		Detached: detached,
		Setup:    func(context.Context, *Welcome) (Worker, error) { return w, nil },
		Systems:  []string{"x86_64-linux"},
		MaxJobs:  3,
		SpoolDir: t.TempDir(),
	}
	// session starts a session and returns the node's end and the Hello.
	session := func() (Conn, *Hello) {
		nodeEnd, workerEnd := Pipe()
		go Serve(ctx, workerEnd, cfg)
		m, err := nodeEnd.Read(ctx)
		if err != nil {
			t.Fatalf("read hello: %v", err)
		}
		welcome := &Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: 60000, LeaseMillis: 30000, CachePath: "/cache/main"}
		if err := nodeEnd.Write(ctx, welcome); err != nil {
			t.Fatal(err)
		}
		return nodeEnd, m.(*Hello)
	}

	first, hello := session()
	if len(hello.DetachedBuilds) != 0 {
		t.Errorf("first Hello DetachedBuilds = %q, want none", hello.DetachedBuilds)
	}
	for job, drv := range []string{okDrv, failedDrv, uploadDrv} {
		if err := first.Write(ctx, &JobOffer{Job: uint64(job + 1), Build: &BuildRequest{DrvPath: drv}}); err != nil {
			t.Fatal(err)
		}
		<-started
	}
	first.Close(websocket.StatusGoingAway, "connection cut")

	second, hello := session()
	if want := []string{okDrv, failedDrv, uploadDrv}; !slices.Equal(hello.DetachedBuilds, want) {
		t.Errorf("Hello while the builds run: DetachedBuilds = %q, want %q", hello.DetachedBuilds, want)
	}
	second.Close(websocket.StatusGoingAway, "connection cut")
	close(release)
	detached.Wait()

	third, hello := session()
	if want := []string{okDrv, uploadDrv}; !slices.Equal(hello.DetachedBuilds, want) {
		t.Errorf("Hello after the builds ended: DetachedBuilds = %q, want %q", hello.DetachedBuilds, want)
	}
	if err := third.Write(ctx, &JobOffer{Job: 1, Build: &BuildRequest{DrvPath: okDrv}}); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := third.Read(ctx)
		if err != nil {
			t.Fatalf("read the result: %v", err)
		}
		if _, ok := m.(*JobResult); ok {
			break
		}
	}
	third.Close(websocket.StatusGoingAway, "connection cut")

	_, hello = session()
	if want := []string{uploadDrv}; !slices.Equal(hello.DetachedBuilds, want) {
		t.Errorf("Hello after a job took up a build: DetachedBuilds = %q, want %q", hello.DetachedBuilds, want)
	}
}
