package protocol

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// RejectError is returned by Serve and RunWorker when the node refused
// the worker: an unknown token, an unsupported protocol version or an
// invalid Hello. Connecting again does not help.
type RejectError struct {
	Reason string
}

func (e *RejectError) Error() string { return "node rejected the worker: " + e.Reason }

// ErrConnectionLost is wrapped by the errors of NAR uploads and path
// queries whose connection ended.
var ErrConnectionLost = errors.New("connection to the node lost")

// PathUploader is implemented by workers that upload store paths they
// hold, with their closure. After an evaluation, Serve uploads the .drv
// closure of the result with it, so that any worker can build the
// derivations by substituting the .drv files from the node's cache.
type PathUploader interface {
	UploadClosure(ctx context.Context, paths []string, nars NARSink) error
}

// PathHolder is implemented by workers that report which store paths they
// contain, for the node's PathQuery.
type PathHolder interface {
	HavePaths(ctx context.Context, paths []string) ([]string, error)
}

// ServeConfig configures the worker's side of a session.
type ServeConfig struct {
	// Capabilities, Systems, Features and MaxJobs go into the Hello. The
	// default capabilities are eval, build and cache; MaxJobs defaults
	// to 1.
	Capabilities []Capability
	Systems      []string
	Features     []string
	MaxJobs      int
	// CPUs and MemoryBytes describe the machine; they default to what
	// the machine reports.
	CPUs        int
	MemoryBytes uint64
	// Setup returns the Worker that runs the jobs of a session, given the
	// node's Welcome, which names its cache and key. Required.
	Setup func(ctx context.Context, welcome *Welcome) (Worker, error)
	// SpoolDir holds compressed NARs while they upload. Default the
	// system's temporary directory.
	SpoolDir string
	// StoreDir is the directory whose file system FreeDiskBytes measures.
	// Default "/".
	StoreDir string
	Logger   *slog.Logger
	// Detached, when set, keeps each build job running after its
	// connection ends, until nix has built the derivation, so that the
	// outputs stay in the worker's store and the job's next offer finds
	// them built. Its log is dropped and its upload fails once the
	// connection is gone, and ctx still cancels it. Serve returns without
	// waiting for these builds: it adds them to Detached, and the caller
	// waits on it. Later sessions sharing Detached count such builds in
	// their heartbeats, and list them, with those that succeeded after
	// their connection ended, in Hello.DetachedBuilds. When nil, Serve
	// cancels every job when it returns.
	Detached *DetachedBuilds

	// welcomed, when set, receives the node's Welcome after the
	// handshake, such as for RunWorker to fit its backoff to the lease.
	welcomed func(*Welcome)
}

// DetachedBuilds tracks the build jobs that may outlive their session,
// across the sessions of one worker. The zero value is ready to use.
type DetachedBuilds struct {
	wg sync.WaitGroup

	// mu guards the fields below.
	mu sync.Mutex
	// owners maps each running build's derivation to the sessions that
	// run it, once per job.
	owners map[string][]*workerSession
	// logs keeps, by derivation, the output that builds wrote after
	// their connection ended, until a later job of the derivation takes
	// it. Its length is bounded by maxDetachedLogs.
	logs map[string]*detachedLog
	// added counts the logs ever kept.
	added uint64
	// built maps each derivation whose build succeeded after its
	// connection ended, and that no later job took up, to the value of
	// builtCount when it was added. Its length is bounded by
	// maxDetachedBuilt.
	built      map[string]uint64
	builtCount uint64
}

// detachedLog is the output of a build whose connection ended.
type detachedLog struct {
	// buf holds at most maxDetachedLog bytes of the end of the output.
	buf []byte
	// added orders the logs for eviction.
	added uint64
}

// maxDetachedLog bounds the output kept of one detached build, and
// maxDetachedLogs the number of derivations whose output is kept.
const (
	maxDetachedLog  = 1 << 20
	maxDetachedLogs = 64
)

// maxDetachedBuilt bounds the derivations whose builds succeeded after
// their connection ended that the next Hello reports.
const maxDetachedBuilt = 256

// detachedLogHeader starts the output of a detached build in the log of
// the job that takes it.
const detachedLogHeader = "\n[gradient] output of the build that went on while the connection to the node was down:\n"

// spill keeps p, output of a build of drvPath whose connection ended,
// for a later job of the derivation.
func (d *DetachedBuilds) spill(drvPath string, p []byte) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.logs == nil {
		d.logs = map[string]*detachedLog{}
	}
	l := d.logs[drvPath]
	if l == nil {
		if len(d.logs) >= maxDetachedLogs {
			d.evictOldestLog()
		}
		d.added++
		l = &detachedLog{added: d.added}
		d.logs[drvPath] = l
	}
	l.buf = append(l.buf, p...)
	if over := len(l.buf) - maxDetachedLog; over > 0 {
		l.buf = append(l.buf[:0], l.buf[over:]...)
	}
}

// evictOldestLog drops the kept output that was added first. Called with
// mu held.
func (d *DetachedBuilds) evictOldestLog() {
	oldest := ""
	for drv, l := range d.logs {
		if oldest == "" || l.added < d.logs[oldest].added {
			oldest = drv
		}
	}
	delete(d.logs, oldest)
}

// takeLog returns and drops the output that builds of drvPath wrote
// after their connection ended, once no session but s still runs such a
// build, or after waiting at most wait for them.
func (d *DetachedBuilds) takeLog(s *workerSession, drvPath string, wait time.Duration) []byte {
	deadline := time.Now().Add(wait)
	for {
		d.mu.Lock()
		others := slices.ContainsFunc(d.owners[drvPath], func(o *workerSession) bool { return o != s })
		if !others || time.Now().After(deadline) {
			var out []byte
			if l := d.logs[drvPath]; l != nil {
				out = l.buf
				delete(d.logs, drvPath)
			}
			d.mu.Unlock()
			return out
		}
		d.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

// Wait waits until every build added so far has ended.
func (d *DetachedBuilds) Wait() { d.wg.Wait() }

// succeeded records that a build of drvPath succeeded after its
// connection ended, so that the next Hello reports it.
func (d *DetachedBuilds) succeeded(drvPath string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.built == nil {
		d.built = map[string]uint64{}
	}
	if _, ok := d.built[drvPath]; !ok && len(d.built) >= maxDetachedBuilt {
		oldest := ""
		for drv, n := range d.built {
			if oldest == "" || n < d.built[oldest] {
				oldest = drv
			}
		}
		delete(d.built, oldest)
	}
	d.builtCount++
	d.built[drvPath] = d.builtCount
}

// report returns the sorted derivations for Hello.DetachedBuilds: those
// with a build still running and those whose build succeeded after its
// connection ended. It is called before a session starts jobs, so every
// running build belongs to an earlier session. Past MaxDetachedBuilds
// entries, the rest are left out.
func (d *DetachedBuilds) report() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var drvs []string
	for drv := range d.owners {
		drvs = append(drvs, drv)
	}
	for drv := range d.built {
		if _, running := d.owners[drv]; !running {
			drvs = append(drvs, drv)
		}
	}
	slices.Sort(drvs)
	return drvs[:min(len(drvs), MaxDetachedBuilds)]
}

// start records that s runs a build of drvPath. The returned func records
// its end.
func (d *DetachedBuilds) start(s *workerSession, drvPath string) (done func()) {
	d.wg.Add(1)
	d.mu.Lock()
	if d.owners == nil {
		d.owners = map[string][]*workerSession{}
	}
	d.owners[drvPath] = append(d.owners[drvPath], s)
	// This job reports the result from now on.
	delete(d.built, drvPath)
	d.mu.Unlock()
	return func() {
		d.mu.Lock()
		owners := d.owners[drvPath]
		if i := slices.Index(owners, s); i >= 0 {
			owners = slices.Delete(owners, i, i+1)
		}
		if len(owners) == 0 {
			delete(d.owners, drvPath)
		} else {
			d.owners[drvPath] = owners
		}
		d.mu.Unlock()
		d.wg.Done()
	}
}

// orphans returns how many derivations are being built by earlier
// sessions only, not by s: builds that went on after their connection
// ended and that s's jobs do not cover.
func (d *DetachedBuilds) orphans(s *workerSession) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, owners := range d.owners {
		if !slices.Contains(owners, s) {
			n++
		}
	}
	return n
}

func (c ServeConfig) withDefaults() ServeConfig {
	if len(c.Capabilities) == 0 {
		c.Capabilities = []Capability{CapEval, CapBuild, CapCache}
	}
	if c.MaxJobs <= 0 {
		c.MaxJobs = 1
	}
	if c.CPUs == 0 {
		c.CPUs = numCPU()
	}
	if c.MemoryBytes == 0 {
		c.MemoryBytes = totalMemory()
	}
	if c.StoreDir == "" {
		c.StoreDir = "/"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// workerSession is the worker's side of one connection.
type workerSession struct {
	cfg     ServeConfig
	conn    Conn
	worker  Worker
	welcome *Welcome
	log     *slog.Logger
	// ctx ends with the session; writes use it because a write whose
	// context ends closes the connection.
	ctx  context.Context
	done chan struct{}
	// detachedCtx is the context of builds that outlive the session: the
	// ctx passed to Serve. Set only when cfg.Detached is set.
	detachedCtx context.Context

	// mu guards the fields below.
	mu     sync.Mutex
	nextID uint64
	jobs   map[uint64]context.CancelFunc
	// uploading holds the jobs whose outputs are built and
	// uploading, which take no slot.
	uploading map[uint64]bool
	queries   map[uint64]chan *PathAnswer
	offsets   map[uint64]chan *NAROffset
	stored    map[uint64]chan *NARStored
}

// Serve runs one session of a worker over conn: the handshake, then the
// jobs the node offers, until the connection or ctx ends. When ctx ends
// it closes conn with a normal closure, so the node treats the worker as
// stopped rather than dropped. It cancels the session's
// running jobs when it returns, except builds that cfg.Detached lets
// finish, and returns why the session ended: a *RejectError when the
// node refused the worker.
func Serve(ctx context.Context, conn Conn, cfg ServeConfig) error {
	cfg = cfg.withDefaults()
	if cfg.Setup == nil {
		return errors.New("serve: ServeConfig.Setup is required")
	}
	detachedCtx := ctx

	welcome, err := workerHandshake(ctx, conn, cfg)
	if err != nil {
		return err
	}
	if cfg.welcomed != nil {
		cfg.welcomed(welcome)
	}
	cfg.Logger.Info("connected to the node", "worker_id", welcome.WorkerID)

	// Reads and writes whose context ends close a WebSocket without a
	// close frame, which the node takes for a dropped connection. So the
	// session's context ends only after the session, and the end of ctx
	// closes the connection properly instead.
	stop := context.AfterFunc(ctx, func() { conn.Close(websocket.StatusNormalClosure, "worker stopping") })
	defer stop()
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()

	w, err := cfg.Setup(ctx, welcome)
	if err != nil {
		conn.Close(websocket.StatusInternalError, "worker setup failed")
		return fmt.Errorf("set up worker: %w", err)
	}

	s := &workerSession{
		cfg: cfg, conn: conn, worker: w, welcome: welcome, ctx: ctx,
		log:       cfg.Logger.With("component", "worker_session"),
		done:      make(chan struct{}),
		jobs:      map[uint64]context.CancelFunc{},
		uploading: map[uint64]bool{},
		queries:   map[uint64]chan *PathAnswer{},
		offsets:   map[uint64]chan *NAROffset{},
		stored:    map[uint64]chan *NARStored{},
	}
	if cfg.Detached != nil {
		s.detachedCtx = detachedCtx
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer close(s.done)
	defer cancel()

	wg.Add(1)
	go func() {
		defer wg.Done()
		s.heartbeats(ctx)
	}()
	return s.readLoop(ctx, &wg)
}

// processInstance is this process's Hello.Instance.
var processInstance = rand.Text()[:16]

// workerHandshake sends the Hello and waits for the Welcome.
func workerHandshake(ctx context.Context, conn Conn, cfg ServeConfig) (*Welcome, error) {
	hello := &Hello{
		Version:      Version,
		Capabilities: cfg.Capabilities,
		Systems:      cfg.Systems,
		Features:     cfg.Features,
		MaxJobs:      cfg.MaxJobs,
		CPUs:         cfg.CPUs,
		MemoryBytes:  cfg.MemoryBytes,
		Instance:     processInstance,
	}
	if cfg.Detached != nil {
		hello.DetachedBuilds = cfg.Detached.report()
	}
	if err := conn.Write(ctx, hello); err != nil {
		return nil, fmt.Errorf("send hello: %w", err)
	}
	m, err := conn.Read(ctx)
	if err != nil {
		if status := websocket.CloseStatus(err); status == websocket.StatusPolicyViolation {
			var ce websocket.CloseError
			errors.As(err, &ce)
			return nil, &RejectError{Reason: ce.Reason}
		}
		return nil, fmt.Errorf("read welcome: %w", err)
	}
	switch m := m.(type) {
	case *Welcome:
		return m, nil
	case *Reject:
		conn.Close(websocket.StatusNormalClosure, "")
		return nil, &RejectError{Reason: m.Reason}
	default:
		conn.Close(websocket.StatusPolicyViolation, "expected welcome")
		return nil, fmt.Errorf("read welcome: got a %s message", m.Type())
	}
}

// heartbeats sends a Heartbeat every interval the node asked for. Over a
// Conn that is a Pinger it also pings the node. When no pong comes
// within half the lease it closes the connection, so that the worker
// connects again to a node that went silent on an open connection.
func (s *workerSession) heartbeats(ctx context.Context) {
	interval := time.Duration(s.welcome.HeartbeatMillis) * time.Millisecond
	pingTimeout := time.Duration(s.welcome.LeaseMillis) * time.Millisecond / 2
	pinger, _ := s.conn.(Pinger)
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		if pinger != nil && pingTimeout > 0 {
			pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
			err := pinger.Ping(pingCtx)
			cancel()
			if err != nil && ctx.Err() == nil {
				s.log.Warn("the node did not respond to a ping; connecting again", "timeout", pingTimeout, "err", err)
				s.conn.Close(websocket.StatusGoingAway, "the node did not respond to a ping")
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			s.mu.Lock()
			running := len(s.jobs)
			s.mu.Unlock()
			if s.cfg.Detached != nil {
				running += s.cfg.Detached.orphans(s)
			}
			hb := &Heartbeat{RunningJobs: running, Load1: loadAverage(), FreeDiskBytes: freeDisk(s.cfg.StoreDir)}
			if err := s.conn.Write(ctx, hb); err != nil {
				return
			}
		}
	}
}

func (s *workerSession) readLoop(ctx context.Context, wg *sync.WaitGroup) error {
	for {
		m, err := s.conn.Read(ctx)
		if errors.Is(err, ErrMalformed) {
			s.log.Warn("malformed frame from the node: closing the connection", "err", err)
			s.conn.Close(websocket.StatusUnsupportedData, err.Error())
			return err
		}
		if err != nil {
			return err
		}
		switch m := m.(type) {
		case *JobOffer:
			s.startJob(m, wg)
		case *JobAbort:
			s.mu.Lock()
			cancel := s.jobs[m.Job]
			s.mu.Unlock()
			if cancel != nil {
				s.log.Info("job aborted by the node", "job", m.Job)
				cancel()
			}
		case *PathQuery:
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.answerQuery(ctx, m)
			}()
		case *PathAnswer:
			s.deliver(func() { deliverTo(s.queries, m.ID, m) })
		case *NAROffset:
			s.deliver(func() { deliverTo(s.offsets, m.Upload, m) })
		case *NARStored:
			s.deliver(func() { deliverTo(s.stored, m.Upload, m) })
		case *Heartbeat, *Welcome:
			// A node may echo these; they carry nothing for the worker.
		default:
			reason := fmt.Sprintf("unexpected %s message from the node", m.Type())
			s.conn.Close(websocket.StatusPolicyViolation, reason)
			return errors.New(reason)
		}
	}
}

func (s *workerSession) deliver(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn()
}

// deliverTo hands m to the waiter registered under id, if any. Each
// channel has room for one message.
func deliverTo[M any](waiters map[uint64]chan M, id uint64, m M) {
	if ch, ok := waiters[id]; ok {
		delete(waiters, id)
		ch <- m
	}
}

// startJob accepts an offer when a slot is free and runs the job in the
// background, or declines it.
func (s *workerSession) startJob(offer *JobOffer, wg *sync.WaitGroup) {
	decline := ""
	s.mu.Lock()
	switch {
	case len(s.jobs)-len(s.uploading) >= s.cfg.MaxJobs:
		decline = fmt.Sprintf("all %d job slots are busy", s.cfg.MaxJobs)
	case offer.Eval != nil && !slices.Contains(s.cfg.Capabilities, CapEval):
		decline = "this worker does not evaluate"
	case offer.Build != nil && !slices.Contains(s.cfg.Capabilities, CapBuild):
		decline = "this worker does not build"
	case s.jobs[offer.Job] != nil:
		decline = "a job with this ID runs already"
	}
	if decline != "" {
		s.mu.Unlock()
		_ = s.conn.Write(s.ctx, &JobDecline{Job: offer.Job, Reason: decline})
		return
	}
	// A build that may outlive the session runs on the context of the
	// worker, and the session does not wait for it.
	detached := offer.Build != nil && s.detachedCtx != nil
	parent := s.ctx
	var jobDone func()
	if detached {
		parent = s.detachedCtx
		jobDone = s.cfg.Detached.start(s, offer.Build.DrvPath)
	} else {
		wg.Add(1)
		jobDone = wg.Done
	}
	jobCtx, cancel := context.WithCancel(parent)
	s.jobs[offer.Job] = cancel
	s.mu.Unlock()

	go func() {
		defer jobDone()
		release := func() {
			cancel()
			s.mu.Lock()
			delete(s.jobs, offer.Job)
			delete(s.uploading, offer.Job)
			s.mu.Unlock()
		}
		if err := s.conn.Write(s.ctx, &JobAccept{Job: offer.Job}); err != nil {
			release()
			return
		}
		result, built := s.runJob(jobCtx, offer, detached)
		// The slot is free before the result goes out: a node that reads
		// the result may offer the next job at once.
		release()
		if detached && s.ctx.Err() != nil {
			s.logDetached(offer, result)
		} else if err := s.conn.Write(s.ctx, result); err == nil || !detached {
			return
		}
		// The result cannot reach the node, so the next Hello reports a
		// build whose outputs are in the store.
		if built {
			s.cfg.Detached.succeeded(offer.Build.DrvPath)
		}
	}()
}

// logDetached logs the end of a build that ran on after its session
// ended, whose result cannot reach the node.
func (s *workerSession) logDetached(offer *JobOffer, result *JobResult) {
	log := s.log.With("job", offer.Job, "drv_path", offer.Build.DrvPath)
	if result.Error != nil {
		log.Info("build ended after the connection to the node ended", "err", result.Error.Message, "build_failed", result.Error.BuildFailed)
		return
	}
	log.Info("build ended after the connection to the node ended")
}

// runJob runs one job with the session's Worker and returns its result,
// and for a build whether nix built the outputs, even if their upload
// failed because the connection ended. A detached job drops its log once
// the connection is gone, instead of failing, so that nix goes on.
func (s *workerSession) runJob(ctx context.Context, offer *JobOffer, detached bool) (result *JobResult, built bool) {
	log := &logWriter{s: s, job: offer.Job}
	if detached {
		log.detachedDrv = offer.Build.DrvPath
	}
	sink := &remoteSink{s: s, job: offer.Job}
	result = &JobResult{Job: offer.Job}
	var err error
	if offer.Eval != nil {
		var res EvalResult
		res, err = s.worker.Evaluate(ctx, *offer.Eval, log)
		if err == nil && !offer.Eval.ListOnly {
			err = s.uploadDerivations(ctx, res, sink)
		}
		result.Eval = &res
	} else {
		var res BuildResult
		res, err = s.worker.Build(ctx, *offer.Build, log, sink)
		result.Build = &res
		// Only the upload after nix built the outputs fails for want of
		// a connection: the log of a detached build does not.
		built = err == nil || detached && errors.Is(err, ErrConnectionLost)
		// Nix finished this build only after any earlier build of the
		// derivation, so the output those wrote while their connection
		// was down is complete: it goes into this job's log.
		if detached && s.ctx.Err() == nil {
			if out := s.cfg.Detached.takeLog(s, offer.Build.DrvPath, 10*time.Second); len(out) > 0 {
				_, _ = io.WriteString(log, detachedLogHeader)
				_, _ = log.Write(out)
			}
		}
	}
	if err != nil {
		if errors.Is(err, ErrWorkerFault) {
			s.log.Error("job failed because of this worker; the node runs it elsewhere", "job", offer.Job, "err", err)
		}
		result.Eval, result.Build = nil, nil
		result.Error = &JobError{BuildFailed: IsBuildError(err), Fault: errors.Is(err, ErrWorkerFault), Message: err.Error()}
		var be *BuildError
		if errors.As(err, &be) {
			result.Error.Message = be.Message
		}
	}
	return result, built
}

// uploadDerivations uploads the .drv closure of an evaluation result to
// the node when the worker can.
func (s *workerSession) uploadDerivations(ctx context.Context, res EvalResult, sink NARSink) error {
	up, ok := s.worker.(PathUploader)
	if !ok || len(res.Derivations) == 0 {
		return nil
	}
	drvs := make([]string, 0, len(res.Derivations))
	for _, d := range res.Derivations {
		drvs = append(drvs, d.DrvPath)
	}
	if err := up.UploadClosure(ctx, drvs, sink); err != nil {
		return fmt.Errorf("upload derivations to the node: %w", err)
	}
	return nil
}

// answerQuery sends the reply to the node's PathQuery about the worker's
// store.
func (s *workerSession) answerQuery(ctx context.Context, q *PathQuery) {
	answer := &PathAnswer{ID: q.ID}
	if holder, ok := s.worker.(PathHolder); ok {
		have, err := holder.HavePaths(ctx, q.Paths)
		if err != nil {
			answer.Error = err.Error()
		}
		answer.Have = have
	}
	_ = s.conn.Write(s.ctx, answer)
}

// logWriter streams a job's output to the node in LogChunks.
type logWriter struct {
	s   *workerSession
	job uint64
	// detachedDrv, when set, is the derivation of a build that goes on
	// when the connection is gone: Write then hands its output to
	// ServeConfig.Detached instead of failing.
	detachedDrv string

	// mu guards lost.
	mu sync.Mutex
	// lost is set once a write failed.
	lost bool
}

// Write sends p in chunks. It returns an error wrapping ErrConnectionLost
// when a chunk cannot be written, unless detachedDrv is set.
func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for sent := 0; sent < len(p); {
		if w.lost {
			w.s.cfg.Detached.spill(w.detachedDrv, p[sent:])
			return len(p), nil
		}
		n := min(len(p)-sent, MaxChunkSize)
		data := make([]byte, n)
		copy(data, p[sent:sent+n])
		if err := w.s.conn.Write(w.s.ctx, &LogChunk{Job: w.job, Data: data}); err != nil {
			if w.detachedDrv != "" {
				w.lost = true
				continue
			}
			return sent, fmt.Errorf("send log: %w: %w", ErrConnectionLost, err)
		}
		sent += n
	}
	return len(p), nil
}

var _ io.Writer = (*logWriter)(nil)
