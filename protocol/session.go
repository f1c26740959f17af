package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// session is the node's side of one worker connection after the
// handshake.
type session struct {
	hub   *Hub
	conn  Conn
	id    string
	hello Hello
	// remoteAddr is the worker's address, for log lines.
	remoteAddr string
	log        *slog.Logger
	remote     *RemoteWorker

	// replies carries the messages that the read loop answers with, so
	// that it never blocks on a write while the worker blocks on one.
	replies chan Message
	// done is closed when the connection ended, left after Left returned.
	done      chan struct{}
	left      chan struct{}
	closeOnce sync.Once

	// mu guards the fields below.
	mu sync.Mutex
	// closedByNode is set when the node closed the connection on purpose,
	// and replaced when a newer connection of the worker took its place.
	closedByNode bool
	replaced     bool
	// dropped is set when run returns, see RemoteWorker.Dropped.
	dropped     bool
	connectedAt time.Time
	lastSeen    time.Time
	heartbeat   Heartbeat
	ended       bool
	nextID      uint64
	jobs        map[uint64]*remoteJob
	queries     map[uint64]chan *PathAnswer
	uploads     map[uint64]*incomingUpload
}

func newSession(h *Hub, conn Conn, id string, hello Hello, log *slog.Logger) *session {
	now := h.cfg.Now()
	s := &session{
		hub:         h,
		conn:        conn,
		id:          id,
		hello:       hello,
		log:         log,
		replies:     make(chan Message, 256),
		done:        make(chan struct{}),
		left:        make(chan struct{}),
		connectedAt: now,
		lastSeen:    now,
		jobs:        map[uint64]*remoteJob{},
		queries:     map[uint64]chan *PathAnswer{},
		uploads:     map[uint64]*incomingUpload{},
	}
	s.remote = &RemoteWorker{s: s}
	return s
}

// close closes the connection with a reason; run then returns.
func (s *session) close(code websocket.StatusCode, reason string) {
	s.mu.Lock()
	s.closedByNode = true
	s.mu.Unlock()
	s.closeOnce.Do(func() { s.conn.Close(code, reason) })
}

// replace closes the connection because a newer connection of the same
// worker arrived: the worker is back, so the session counts as dropped.
func (s *session) replace() {
	s.mu.Lock()
	s.replaced = true
	s.mu.Unlock()
	s.close(websocket.StatusPolicyViolation, "replaced by a newer connection of the same worker")
}

// endedBy records how the connection ended, given the error that ended
// the read loop.
func (s *session) endedBy(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.dropped = s.replaced || (!s.closedByNode && websocket.CloseStatus(err) != websocket.StatusNormalClosure)
}

// run reads and handles messages until the connection ends, and returns
// why it ended. A malformed frame or a message the node does not expect
// closes the connection with the reason.
func (s *session) run(ctx context.Context) error {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		s.writeReplies(ctx)
	}()
	defer func() {
		close(s.done)
		<-writerDone
	}()

	for {
		m, err := s.conn.Read(ctx)
		if errors.Is(err, ErrMalformed) {
			s.log.Warn("malformed frame from worker: closing the connection", "err", err)
			s.close(websocket.StatusUnsupportedData, err.Error())
			return err
		}
		if err != nil {
			s.endedBy(err)
			s.close(websocket.StatusGoingAway, "read failed")
			return err
		}

		s.mu.Lock()
		s.lastSeen = s.hub.cfg.Now()
		s.mu.Unlock()
		if err := s.handle(ctx, m); err != nil {
			s.log.Warn("protocol violation by worker: closing the connection", "err", err)
			s.close(websocket.StatusPolicyViolation, err.Error())
			return err
		}
	}
}

// writeReplies sends queued replies in order until the session ends.
func (s *session) writeReplies(ctx context.Context) {
	for {
		select {
		case m := <-s.replies:
			if err := s.conn.Write(ctx, m); err != nil {
				s.close(websocket.StatusGoingAway, "write failed")
				return
			}
		case <-s.done:
			return
		}
	}
}

// reply queues m for the worker. It drops m when the session ended.
func (s *session) reply(m Message) {
	select {
	case s.replies <- m:
	case <-s.done:
	}
}

// handle processes one message from the worker. An error is a protocol
// violation.
func (s *session) handle(ctx context.Context, m Message) error {
	switch m := m.(type) {
	case *Heartbeat:
		s.mu.Lock()
		s.heartbeat = *m
		s.mu.Unlock()
	case *JobAccept:
		if j := s.job(m.Job); j != nil {
			s.log.Debug("job accepted", "job", m.Job)
		}
	case *JobDecline:
		s.finishJob(m.Job, &JobResult{Job: m.Job, Error: &JobError{Message: m.Reason, declined: true}}, true)
	case *LogChunk:
		if j := s.job(m.Job); j != nil {
			j.writeLog(m.Data)
		}
	case *JobResult:
		s.finishJob(m.Job, m, false)
	case *JobBuilt:
		if j := s.job(m.Job); j != nil {
			j.outputsBuilt()
		}
	case *PathQuery:
		go s.answerQuery(ctx, m)
	case *PathAnswer:
		s.mu.Lock()
		ch := s.queries[m.ID]
		delete(s.queries, m.ID)
		s.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	case *NARBegin:
		return s.beginUpload(ctx, m)
	case *NARChunk:
		return s.writeChunk(ctx, m)
	default:
		return fmt.Errorf("unexpected %s message from a worker", m.Type())
	}
	return nil
}

func (s *session) job(id uint64) *remoteJob {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.jobs[id]
}

// finishJob hands a job's result to the goroutine that waits for it. A
// result for a job that already has one, was aborted or never existed is
// ignored, so each job takes at most one result.
func (s *session) finishJob(id uint64, r *JobResult, declined bool) {
	s.mu.Lock()
	j := s.jobs[id]
	delete(s.jobs, id)
	s.mu.Unlock()
	if j == nil {
		s.log.Debug("result for an unknown or finished job ignored", "job", id, "declined", declined)
		return
	}
	j.result <- r
}

// answerQuery answers a worker's PathQuery from the NARSink of its job.
func (s *session) answerQuery(ctx context.Context, q *PathQuery) {
	sink := s.sinkFor(q.Job)
	answer := &PathAnswer{ID: q.ID}
	missing, err := missingPaths(ctx, sink, q.Paths)
	if err != nil {
		answer.Error = err.Error()
	} else {
		isMissing := make(map[string]bool, len(missing))
		for _, p := range missing {
			isMissing[p] = true
		}
		for _, p := range q.Paths {
			if !isMissing[p] {
				answer.Have = append(answer.Have, p)
			}
		}
	}
	s.reply(answer)
}

// pathLister is implemented by sinks that look up many paths at once, as
// cache.Store does.
type pathLister interface {
	Missing(ctx context.Context, storePaths []string) ([]string, error)
}

func missingPaths(ctx context.Context, sink NARSink, paths []string) ([]string, error) {
	if l, ok := sink.(pathLister); ok {
		return l.Missing(ctx, paths)
	}
	var missing []string
	for _, p := range paths {
		has, err := sink.HasPath(ctx, p)
		if err != nil {
			return nil, err
		}
		if !has {
			missing = append(missing, p)
		}
	}
	return missing, nil
}

// sinkFor returns the NARSink of a job, or the Hub's for job 0 and jobs
// that ended.
func (s *session) sinkFor(job uint64) NARSink {
	if j := s.job(job); j != nil && j.nars != nil {
		return j.nars
	}
	return s.hub.cfg.NARs
}

// teardown ends what the session left open: waiting queries and jobs see
// done, and open uploads keep their partial files for a later resume.
func (s *session) teardown() {
	s.mu.Lock()
	s.ended = true
	uploads := s.uploads
	s.uploads = map[uint64]*incomingUpload{}
	s.mu.Unlock()
	for _, u := range uploads {
		s.hub.releasePartial(u)
	}
}

func (s *session) lastSeenTime() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastSeen
}

func (s *session) status() WorkerStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	return WorkerStatus{
		ID:          s.id,
		Hello:       s.hello,
		Heartbeat:   s.heartbeat,
		ConnectedAt: s.connectedAt,
		LastSeen:    s.lastSeen,
		RunningJobs: len(s.jobs),
	}
}

// remoteJob is a job that the node offered and waits for.
type remoteJob struct {
	id        uint64
	nars      NARSink
	result    chan *JobResult
	builtOnce sync.Once

	// mu guards log, which is nil after the job returned.
	mu  sync.Mutex
	log io.Writer
}

// outputsBuilt notifies the job's sink, once, that the worker built the
// outputs.
func (j *remoteJob) outputsBuilt() {
	j.builtOnce.Do(func() {
		if n, ok := j.nars.(BuiltNotifier); ok {
			n.OutputsBuilt()
		}
	})
}

func (j *remoteJob) writeLog(data []byte) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.log != nil {
		_, _ = j.log.Write(data)
	}
}

// RemoteWorker is a worker connected to a Hub, as a protocol.Worker: its
// methods send the job over the connection and wait for the result. It is
// safe for concurrent use. Once its connection ended every method returns
// an error wrapping ErrWorkerGone.
type RemoteWorker struct {
	s *session
}

var _ Worker = (*RemoteWorker)(nil)

// ID returns the worker's ID.
func (w *RemoteWorker) ID() string { return w.s.id }

// Hello returns what the worker announced in its handshake.
func (w *RemoteWorker) Hello() Hello { return w.s.hello }

// Done is closed when the worker's connection ended.
func (w *RemoteWorker) Done() <-chan struct{} { return w.s.done }

// Dropped reports whether the connection ended without the worker
// stopping or the node closing it on purpose: a network failure, a crashed
// worker, or a newer connection of the worker. Such a worker may come back
// with its builds still running. Valid once Done is closed.
func (w *RemoteWorker) Dropped() bool {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.dropped
}

// Evaluate runs req on the worker, writing its progress lines to progress.
func (w *RemoteWorker) Evaluate(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error) {
	r, err := w.s.runJob(ctx, &JobOffer{Eval: &req}, progress, nil)
	if err != nil {
		return EvalResult{}, err
	}
	if r.Eval == nil {
		return EvalResult{}, fmt.Errorf("evaluate on worker %q: the result is not an evaluation result", w.s.id)
	}
	return *r.Eval, nil
}

// Build runs req on the worker. The build log goes to log as it arrives,
// and the outputs the worker uploads go to nars; the result arrives after
// every upload. A failed builder returns a *BuildError.
func (w *RemoteWorker) Build(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
	r, err := w.s.runJob(ctx, &JobOffer{Build: &req}, log, nars)
	if err != nil {
		var je *JobError
		if errors.As(err, &je) && je.BuildFailed {
			return BuildResult{}, &BuildError{DrvPath: req.DrvPath, Message: je.Message}
		}
		return BuildResult{}, err
	}
	if r.Build == nil {
		return BuildResult{}, fmt.Errorf("build on worker %q: the result is not a build result", w.s.id)
	}
	return *r.Build, nil
}

// QueryPaths sends the worker a PathQuery for paths and waits for its
// PathAnswer. It returns the paths the worker's store contains and the
// answer's MissingNarSize, which is 0 when the worker does not know the
// sizes of the other paths.
func (w *RemoteWorker) QueryPaths(ctx context.Context, paths []string) (have []string, missingNarSize uint64, err error) {
	s := w.s
	ch := make(chan *PathAnswer, 1)
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, 0, fmt.Errorf("query paths of worker %q: %w", s.id, ErrWorkerGone)
	}
	s.nextID++
	id := s.nextID
	s.queries[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.queries, id)
		s.mu.Unlock()
	}()

	s.reply(&PathQuery{ID: id, Paths: paths})
	select {
	case a := <-ch:
		if a.Error != "" {
			return nil, 0, fmt.Errorf("query paths of worker %q: %s", s.id, a.Error)
		}
		return a.Have, a.MissingNarSize, nil
	case <-s.done:
		return nil, 0, fmt.Errorf("query paths of worker %q: %w", s.id, ErrWorkerGone)
	case <-ctx.Done():
		return nil, 0, ctx.Err()
	}
}

// runJob offers a job and waits for its result. A JobError result is
// returned as the error.
func (s *session) runJob(ctx context.Context, offer *JobOffer, log io.Writer, nars NARSink) (*JobResult, error) {
	j := &remoteJob{nars: nars, log: log, result: make(chan *JobResult, 1)}
	s.mu.Lock()
	if s.ended {
		s.mu.Unlock()
		return nil, fmt.Errorf("run job on worker %q: %w", s.id, ErrWorkerGone)
	}
	s.nextID++
	j.id = s.nextID
	offer.Job = j.id
	s.jobs[j.id] = j
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.jobs, j.id)
		s.mu.Unlock()
		j.mu.Lock()
		j.log = nil
		j.mu.Unlock()
	}()

	// The offer goes through the reply queue: a WebSocket write whose
	// context ends closes the whole connection, not only this job.
	s.reply(offer)
	select {
	case r := <-j.result:
		if r.Error != nil && r.Error.declined {
			return nil, fmt.Errorf("run job on worker %q: %w: %s", s.id, ErrJobDeclined, r.Error.Message)
		}
		if r.Error != nil {
			return nil, r.Error
		}
		return r, nil
	case <-s.done:
		return nil, fmt.Errorf("run job on worker %q: %w", s.id, ErrWorkerGone)
	case <-ctx.Done():
		s.reply(&JobAbort{Job: j.id})
		return nil, ctx.Err()
	}
}
