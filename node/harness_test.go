package node

import (
	"context"
	"crypto/sha256"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
)

// fakeClock is a clock that tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fakeWorker is a protocol.Worker whose jobs run test functions.
type fakeWorker struct {
	evaluate func(ctx context.Context, req protocol.EvalRequest) (protocol.EvalResult, error)
	build    func(ctx context.Context, req protocol.BuildRequest, log io.Writer) (protocol.BuildResult, error)
	// buildToSink, when set, replaces build and gets the build's NARSink.
	buildToSink func(ctx context.Context, req protocol.BuildRequest, nars protocol.NARSink) (protocol.BuildResult, error)
}

func (f *fakeWorker) Evaluate(ctx context.Context, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	return f.evaluate(ctx, req)
}

func (f *fakeWorker) Build(ctx context.Context, req protocol.BuildRequest, log io.Writer, nars protocol.NARSink) (protocol.BuildResult, error) {
	if f.buildToSink != nil {
		return f.buildToSink(ctx, req, nars)
	}
	return f.build(ctx, req, log)
}

// storePath returns a valid store path for name, with a hash part made
// from name so that each name has one path.
func storePath(name string) string {
	const alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
	sum := sha256.Sum256([]byte(name))
	hash := make([]byte, 32)
	for i := range hash {
		hash[i] = alphabet[sum[i]%32]
	}
	return "/nix/store/" + string(hash) + "-" + name
}

// testDrv is a derivation of a test graph.
type testDrv struct {
	name     string
	system   string
	features []string
	inputs   []string
	parallel bool
}

// graphResult returns the evaluation result of drvs, which list inputs
// before their dependents, with one entry point per derivation.
func graphResult(drvs ...testDrv) protocol.EvalResult {
	res := protocol.EvalResult{Flake: protocol.LockedFlake{OriginalURL: "path:/src", LockedURL: "path:/src?narHash=sha256-x"}}
	for _, d := range drvs {
		system := d.system
		if system == "" {
			system = "x86_64-linux"
		}
		var inputs []string
		for _, in := range d.inputs {
			inputs = append(inputs, storePath(in+".drv"))
		}
		res.Derivations = append(res.Derivations, protocol.Derivation{
			DrvPath:                storePath(d.name + ".drv"),
			Name:                   d.name,
			System:                 system,
			Outputs:                map[string]string{"out": storePath(d.name)},
			InputDrvs:              inputs,
			RequiredSystemFeatures: d.features,
			ParallelBuilding:       d.parallel,
		})
		res.EntryPoints = append(res.EntryPoints, protocol.EntryPoint{Attr: "packages.x." + d.name, DrvPath: storePath(d.name + ".drv")})
	}
	return res
}

// builtResult is what a fake worker returns for a build of drvPath.
func builtResult(req protocol.BuildRequest) protocol.BuildResult {
	out := req.DrvPath[:len(req.DrvPath)-len(".drv")]
	return protocol.BuildResult{Outputs: map[string]protocol.PathInfo{"out": {StorePath: out, NarHash: "sha256-x", NarSize: 1000}}}
}

// harness runs a driver with a hub, a real cache and database, and a fake
// clock. Workers join over protocol.Pipe, as the in-process worker does.
type harness struct {
	t     *testing.T
	ctx   context.Context
	clock *fakeClock
	db    *db.DB
	drv   *driver
	hub   *protocol.Hub
	logs  *logStore
}

// newHarness starts the driver of a harness. Each seed function runs on
// the database before the driver starts, as the state a previous run of
// the node left.
func newHarness(t *testing.T, cfg driverConfig, seed ...func(records *db.DB)) *harness {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if os.Getenv("GRADIENT_TEST_LOG") == "" {
		log = slog.New(slog.DiscardHandler)
	}
	records, err := db.Open(t.TempDir(), log)
	if err != nil {
		t.Fatal(err)
	}
	for _, fn := range seed {
		fn(records)
	}
	secret, _, err := cache.GenerateKey("test-1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(records.Badger(), cache.Config{Name: "main", Dir: t.TempDir(), SecretKey: secret, NoDefaultUpstream: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	logs, err := newLogStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	cfg.Now = clock.Now
	if cfg.RetryDelay == 0 {
		cfg.RetryDelay = time.Millisecond
	}
	drv, err := newDriver(log, records, store, logs, cfg)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	hub, err := protocol.NewHub(protocol.HubConfig{
		Authenticate:      func(context.Context, string) (string, error) { return "", protocol.ErrInvalidToken },
		NARs:              store,
		UploadDir:         t.TempDir(),
		HeartbeatInterval: time.Hour,
		Joined:            func(w *protocol.RemoteWorker) { drv.workerJoined(ctx, w) },
		Left:              func(w *protocol.RemoteWorker) { drv.workerLeft(ctx, w) },
		Logger:            log,
	})
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := drv.Run(ctx); err != nil {
			t.Errorf("driver Run = %v", err)
		}
	}()
	t.Cleanup(func() {
		cancel()
		wg.Wait()
		store.Close()
		records.Close()
	})
	return &harness{t: t, ctx: ctx, clock: clock, db: records, drv: drv, hub: hub, logs: logs}
}

// testWriter writes log lines to the test's log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// connect attaches a worker that runs jobs with w and waits until the
// driver has added it. It returns a function that disconnects it.
func (h *harness) connect(id string, w protocol.Worker, cfg protocol.ServeConfig, wrap ...func(protocol.Conn) protocol.Conn) (disconnect func()) {
	h.t.Helper()
	nodeEnd, workerEnd := protocol.Pipe()
	for _, fn := range wrap {
		workerEnd = fn(workerEnd)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		h.hub.Attach(ctx, nodeEnd, id, "pipe")
	}()
	cfg.Setup = func(context.Context, *protocol.Welcome) (protocol.Worker, error) { return w, nil }
	if cfg.Systems == nil {
		cfg.Systems = []string{"x86_64-linux"}
	}
	cfg.SpoolDir = h.t.TempDir()
	go func() {
		defer wg.Done()
		protocol.Serve(ctx, workerEnd, cfg)
	}()
	disconnect = func() {
		cancel()
		wg.Wait()
	}
	h.t.Cleanup(disconnect)

	h.waitFor("worker "+id+" joined", func() bool {
		joined := false
		h.run(func(context.Context) {
			_, joined = h.drv.workers[id]
			for _, pw := range h.drv.evalPool.snapshot() {
				joined = joined || pw.ID() == id
			}
		})
		return joined
	})
	return disconnect
}

// run runs fn on the driver's Run goroutine and waits for it.
func (h *harness) run(fn func(ctx context.Context)) {
	h.t.Helper()
	done := make(chan struct{})
	if err := h.drv.post(h.ctx, func(ctx context.Context) {
		defer close(done)
		fn(ctx)
	}); err != nil {
		h.t.Fatalf("post to the driver: %v", err)
	}
	<-done
}

// tick runs the driver's periodic work at the fake clock's time.
func (h *harness) tick() {
	h.t.Helper()
	h.run(h.drv.tick)
}

// waitFor polls cond until it holds, failing the test after 10 s.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	ticker := time.NewTicker(5 * time.Millisecond)
	defer ticker.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		<-ticker.C
	}
}

// evaluate creates a project and queues an evaluation of it.
func (h *harness) evaluate(project string) uint64 {
	h.t.Helper()
	if _, err := h.db.CreateProject(db.Project{Org: "demo", Name: project, FlakeRef: "path:/src", EntryPoints: []string{"packages.*.*"}}, h.clock.Now()); err != nil {
		h.t.Fatal(err)
	}
	e, err := h.db.CreateEvaluation("demo", project, h.clock.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	if err := h.drv.Enqueue(h.ctx, e.ID); err != nil {
		h.t.Fatal(err)
	}
	return e.ID
}

// builds returns the builds of an evaluation by derivation name.
func (h *harness) builds(evalID uint64) map[string]db.Build {
	h.t.Helper()
	bs, err := h.db.ListBuilds(evalID)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]db.Build{}
	for _, b := range bs {
		out[b.Name] = b
	}
	return out
}

// evaluation returns the stored evaluation.
func (h *harness) evaluation(id uint64) db.Evaluation {
	h.t.Helper()
	e, err := h.db.GetEvaluation(id)
	if err != nil {
		h.t.Fatal(err)
	}
	return e
}

// waitStatus waits until the evaluation has status.
func (h *harness) waitStatus(id uint64, status db.EvalStatus) db.Evaluation {
	h.t.Helper()
	h.waitFor("evaluation status "+string(status), func() bool { return h.evaluation(id).Status == status })
	return h.evaluation(id)
}

// waitBuild waits until the named build of an evaluation has status.
func (h *harness) waitBuild(evalID uint64, name string, status db.BuildStatus) db.Build {
	h.t.Helper()
	h.waitFor(name+" "+string(status), func() bool { return h.builds(evalID)[name].Status == status })
	return h.builds(evalID)[name]
}
