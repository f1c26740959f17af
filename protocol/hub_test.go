package protocol

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// fakeWorker is a protocol.Worker whose jobs run test functions.
type fakeWorker struct {
	evaluate func(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error)
	build    func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error)
}

func (f *fakeWorker) Evaluate(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error) {
	return f.evaluate(ctx, req, progress)
}

func (f *fakeWorker) Build(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
	return f.build(ctx, req, log, nars)
}

// memSink is a NARSink in memory that keeps each NAR's bytes.
type memSink struct {
	mu   sync.Mutex
	nars map[string][]byte
}

func (m *memSink) HasPath(ctx context.Context, storePath string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.nars[storePath]
	return ok, nil
}

func (m *memSink) PutNAR(ctx context.Context, info PathInfo, nar io.Reader) error {
	b, err := io.ReadAll(nar)
	if err != nil {
		return err
	}
	if uint64(len(b)) != info.NarSize {
		return errors.New("NarSize mismatch")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.nars == nil {
		m.nars = map[string][]byte{}
	}
	m.nars[info.StorePath] = b
	return nil
}

// logBuffer is an slog handler's output that tests search.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Count(l.buf.String(), s)
}

// waitCount polls until s occurs n times in the log, and fails the test
// when it occurs more often or not within 10 s.
func (l *logBuffer) waitCount(t *testing.T, s string, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := l.count(s)
		if got == n {
			return
		}
		if got > n || time.Now().After(deadline) {
			l.mu.Lock()
			defer l.mu.Unlock()
			t.Fatalf("log has %q %d times, want %d; log:\n%s", s, got, n, l.buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testHub is a Hub with channels for its Joined and Left callbacks.
type testHub struct {
	*Hub
	joined chan *RemoteWorker
	left   chan *RemoteWorker
	logs   *logBuffer
	sink   *memSink
}

func newTestHub(t *testing.T, tokens map[string]string) *testHub {
	t.Helper()
	th := &testHub{joined: make(chan *RemoteWorker, 16), left: make(chan *RemoteWorker, 16), logs: &logBuffer{}, sink: &memSink{}}
	h, err := NewHub(HubConfig{
		Authenticate: func(ctx context.Context, token string) (string, error) {
			if id, ok := tokens[token]; ok {
				return id, nil
			}
			return "", ErrInvalidToken
		},
		CachePath:         "/cache/main",
		CachePublicKey:    "test-1:key",
		NARs:              th.sink,
		UploadDir:         t.TempDir(),
		HeartbeatInterval: time.Hour,
		Joined:            func(w *RemoteWorker) { th.joined <- w },
		Left:              func(w *RemoteWorker) { th.left <- w },
		Logger:            slog.New(slog.NewTextHandler(th.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	th.Hub = h
	return th
}

func (th *testHub) waitJoined(t *testing.T) *RemoteWorker {
	t.Helper()
	select {
	case w := <-th.joined:
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("no worker joined within 10s")
		return nil
	}
}

func (th *testHub) waitLeft(t *testing.T) *RemoteWorker {
	t.Helper()
	select {
	case w := <-th.left:
		return w
	case <-time.After(10 * time.Second):
		t.Fatal("no worker left within 10s")
		return nil
	}
}

// servePipe attaches a worker running w to the hub over a Pipe and
// returns a function that stops it and waits for both sides.
func servePipe(t *testing.T, th *testHub, id string, w Worker, cfg ServeConfig) (stop func()) {
	t.Helper()
	nodeEnd, workerEnd := Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		th.Attach(ctx, nodeEnd, id, "pipe")
	}()
	cfg.Setup = func(context.Context, *Welcome) (Worker, error) { return w, nil }
	if cfg.Systems == nil {
		cfg.Systems = []string{"x86_64-linux"}
	}
	cfg.SpoolDir = t.TempDir()
	go func() {
		defer wg.Done()
		Serve(ctx, workerEnd, cfg)
	}()
	stop = func() {
		cancel()
		wg.Wait()
	}
	t.Cleanup(stop)
	return stop
}

func TestRemoteWorkerEvaluateAndBuild(t *testing.T) {
	th := newTestHub(t, nil)
	narBytes := []byte("nar contents of a")
	out := PathInfo{StorePath: "/nix/store/00000000000000000000000000000000-a", NarHash: "sha256-x", NarSize: uint64(len(narBytes))}
	w := &fakeWorker{
		evaluate: func(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error) {
			io.WriteString(progress, "locking "+req.FlakeRef+"\n")
			return EvalResult{EntryPoints: []EntryPoint{{Attr: "packages.x.a", DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"}}}, nil
		},
		build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
			io.WriteString(log, "building "+req.DrvPath+"\n")
			if err := nars.PutNAR(ctx, out, bytes.NewReader(narBytes)); err != nil {
				return BuildResult{}, err
			}
			return BuildResult{Outputs: map[string]PathInfo{"out": out}}, nil
		},
	}
	servePipe(t, th, "w1", w, ServeConfig{MaxJobs: 2})
	rw := th.waitJoined(t)
	if rw.ID() != "w1" || rw.Hello().MaxJobs != 2 {
		t.Errorf("joined worker = %q with max_jobs %d, want w1 with 2", rw.ID(), rw.Hello().MaxJobs)
	}

	var progress bytes.Buffer
	res, err := rw.Evaluate(context.Background(), EvalRequest{FlakeRef: "path:/src", EntryPoints: []string{"packages.*.*"}}, &progress)
	if err != nil {
		t.Fatalf("Evaluate = %v", err)
	}
	if len(res.EntryPoints) != 1 || res.EntryPoints[0].Attr != "packages.x.a" {
		t.Errorf("Evaluate entry points = %+v, want packages.x.a", res.EntryPoints)
	}
	if progress.String() != "locking path:/src\n" {
		t.Errorf("Evaluate progress = %q, want the worker's line", progress.String())
	}

	var log bytes.Buffer
	sink := &memSink{}
	bres, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"}, &log, sink)
	if err != nil {
		t.Fatalf("Build = %v", err)
	}
	if bres.Outputs["out"].StorePath != out.StorePath {
		t.Errorf("Build outputs = %+v, want out = %s", bres.Outputs, out.StorePath)
	}
	if got := string(sink.nars[out.StorePath]); got != string(narBytes) {
		t.Errorf("uploaded NAR = %q, want %q", got, narBytes)
	}
	if !strings.Contains(log.String(), "building") {
		t.Errorf("build log = %q, want the worker's line", log.String())
	}
}

func TestRemoteWorkerBuildError(t *testing.T) {
	th := newTestHub(t, nil)
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		return BuildResult{}, &BuildError{DrvPath: req.DrvPath, Message: "builder failed with exit code 3"}
	}}
	servePipe(t, th, "w1", w, ServeConfig{})
	rw := th.waitJoined(t)

	_, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/x.drv"}, io.Discard, &memSink{})
	var be *BuildError
	if !errors.As(err, &be) || be.Message != "builder failed with exit code 3" {
		t.Errorf("Build = %v, want a *BuildError with the worker's message", err)
	}
}

func TestLeaseExpiryDropsWorker(t *testing.T) {
	th := newTestHub(t, nil)
	started := make(chan struct{})
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		close(started)
		<-ctx.Done()
		return BuildResult{}, ctx.Err()
	}}
	servePipe(t, th, "w1", w, ServeConfig{})
	rw := th.waitJoined(t)

	errc := make(chan error, 1)
	go func() {
		_, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/x.drv"}, io.Discard, &memSink{})
		errc <- err
	}()
	<-started

	if n := th.CheckLeases(time.Now()); n != 0 {
		t.Errorf("CheckLeases(now) = %d, want 0 for a worker that just spoke", n)
	}
	if n := th.CheckLeases(time.Now().Add(time.Hour * 7)); n != 1 {
		t.Errorf("CheckLeases(now + 7h) = %d, want 1", n)
	}
	if err := <-errc; !errors.Is(err, ErrWorkerGone) {
		t.Errorf("Build on a dropped worker = %v, want ErrWorkerGone", err)
	}
	if left := th.waitLeft(t); left != rw {
		t.Errorf("Left reported %q, want the dropped worker", left.ID())
	}
}

func TestLateResultAcceptedOnce(t *testing.T) {
	th := newTestHub(t, nil)
	nodeEnd, workerEnd := Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go th.Attach(ctx, nodeEnd, "raw", "pipe")

	if err := workerEnd.Write(ctx, &Hello{Version: Version, Capabilities: []Capability{CapBuild}, Systems: []string{"x"}, MaxJobs: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := workerEnd.Read(ctx); err != nil {
		t.Fatal(err)
	}
	rw := th.waitJoined(t)

	errc := make(chan error, 1)
	go func() {
		_, err := rw.Build(ctx, BuildRequest{DrvPath: "/nix/store/x.drv"}, io.Discard, &memSink{})
		errc <- err
	}()
	m, err := workerEnd.Read(ctx)
	if err != nil {
		t.Fatal(err)
	}
	offer := m.(*JobOffer)
	result := &JobResult{Job: offer.Job, Build: &BuildResult{}}
	for range 2 {
		if err := workerEnd.Write(ctx, result); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-errc; err != nil {
		t.Errorf("Build = %v, want the first result", err)
	}

	// The second copy is ignored: the session goes on.
	if err := workerEnd.Write(ctx, &Heartbeat{}); err != nil {
		t.Fatal(err)
	}
	th.logs.waitCount(t, "result for an unknown or finished job ignored", 1)
}

// startHTTPHub serves the hub on a loopback port.
func startHTTPHub(t *testing.T, th *testHub) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(th.ServeHTTP))
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		th.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return srv.URL
}

func TestRejectedWorkers(t *testing.T) {
	th := newTestHub(t, map[string]string{"good": "w1"})
	url := startHTTPHub(t, th)
	idle := &fakeWorker{}
	cfg := ServeConfig{Systems: []string{"x86_64-linux"}, Setup: func(context.Context, *Welcome) (Worker, error) { return idle, nil }}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A good worker stays connected through the bad ones below.
	goodCtx, stopGood := context.WithCancel(ctx)
	goodDone := make(chan error, 1)
	go func() { goodDone <- RunWorker(goodCtx, DialWebSocket(url, "good"), RunConfig{ServeConfig: cfg}) }()
	good := th.waitJoined(t)

	t.Run("wrong token", func(t *testing.T) {
		err := RunWorker(ctx, DialWebSocket(url, "wrong"), RunConfig{ServeConfig: cfg})
		var reject *RejectError
		if !errors.As(err, &reject) || !strings.Contains(reject.Reason, "invalid worker token") {
			t.Errorf("RunWorker with a wrong token = %v, want a *RejectError naming the token", err)
		}
		if n := th.logs.count(`reason="invalid token"`); n != 1 {
			t.Errorf("node logged the wrong token %d times, want once", n)
		}
	})

	t.Run("old version", func(t *testing.T) {
		dial := DialWebSocket(url, "good")
		oldDial := func(ctx context.Context) (Conn, error) {
			c, err := dial(ctx)
			return oldVersionConn{c}, err
		}
		err := RunWorker(ctx, oldDial, RunConfig{ServeConfig: cfg})
		var reject *RejectError
		if !errors.As(err, &reject) || !strings.Contains(reject.Reason, "protocol version 0 is not supported") {
			t.Errorf("RunWorker with version 0 = %v, want a *RejectError naming the version", err)
		}
		th.logs.waitCount(t, "protocol version 0 is not supported", 1)
	})

	t.Run("garbage frames", func(t *testing.T) {
		header := http.Header{"Authorization": {"Bearer good"}}
		c, _, err := websocket.Dial(ctx, strings.Replace(url, "http", "ws", 1)+ConnectPath, &websocket.DialOptions{HTTPHeader: header})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Write(ctx, websocket.MessageBinary, []byte{0xff, 0x00, 0x13}); err != nil {
			t.Fatal(err)
		}
		_, _, err = c.Read(ctx)
		if websocket.CloseStatus(err) != websocket.StatusUnsupportedData {
			t.Errorf("read after a garbage frame = %v, want close status %v", err, websocket.StatusUnsupportedData)
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) && !strings.Contains(ce.Reason, "malformed frame") {
			t.Errorf("close reason = %q, want it to name the malformed frame", ce.Reason)
		}
		th.logs.waitCount(t, "worker rejected", 2)
	})

	// The good worker still takes jobs: its session was not disturbed.
	select {
	case <-good.Done():
		t.Fatal("the good worker was disconnected")
	default:
	}
	stopGood()
	if err := <-goodDone; err != nil {
		t.Errorf("RunWorker of the good worker = %v, want nil after cancel", err)
	}
}

// oldVersionConn sends its Hello with protocol version 0, as a worker
// built before version 1 would.
type oldVersionConn struct{ Conn }

func (c oldVersionConn) Write(ctx context.Context, m Message) error {
	if h, ok := m.(*Hello); ok {
		old := *h
		old.Version = 0
		m = &old
	}
	return c.Conn.Write(ctx, m)
}

// String returns the log so far.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// TestDialNotANode checks that a worker pointed at a server that returns
// 404, such as a URL with a wrong path, stops with a reason instead of
// retrying forever.
func TestDialNotANode(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	cfg := ServeConfig{Systems: []string{"x86_64-linux"}, Setup: func(context.Context, *Welcome) (Worker, error) { return &fakeWorker{}, nil }}
	err := RunWorker(ctx, DialWebSocket(srv.URL+"/prefix", "token"), RunConfig{ServeConfig: cfg})
	var reject *RejectError
	if !errors.As(err, &reject) || !strings.Contains(reject.Reason, "404") || !strings.Contains(reject.Reason, "--server") {
		t.Errorf("RunWorker against a 404 = %v, want a *RejectError naming 404 and --server", err)
	}
}
