package scheduler

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// ErrUnknownEvaluation is returned by CancelEvaluation for an evaluation
// the Scheduler does not hold, such as one that is already done.
var ErrUnknownEvaluation = errors.New("unknown evaluation")

// ErrDuplicate is returned by AddGraph and AddWorker for an EvalID or a
// worker ID the Scheduler already holds.
var ErrDuplicate = errors.New("duplicate id")

// Scheduler is the deterministic scheduling core, see the package
// documentation. It is not safe for concurrent use: one goroutine drives
// it. The decisions an event method returns are the caller's to keep.
type Scheduler struct {
	cfg  Config
	less func(a, b *drv) bool

	drvs  map[string]*drv
	evals map[string]*evaluation
	jobs  map[string]*job
	// ended holds the jobs whose last link was built, which freed their
	// slot, until JobFinished reports them.
	ended map[string]struct{}
	// vclock is the highest project vtime at which a job started, the
	// floor of every project's vtime, see projectVTime.
	vclock float64
	// workers is sorted by ID, so that iteration is deterministic.
	workers  []*worker
	projects map[string]*project
	classes  map[string]*class
	// classOrder lists classes in order of creation.
	classOrder []*class
	history    map[historyKey]*historyValue
	// postponed lists the derivations postponed for a peer, for Tick.
	postponed []*drv
	// held lists the derivations held for a worker, for Tick and the
	// events that end holds.
	held []*drv

	// remainingWork is the sum of the estimates of the derivations that
	// are not terminal, in seconds at speed 1, and capacity the sum of the
	// workers' slots times speed. Their ratio estimates the time left.
	remainingWork float64
	capacity      float64
	// free and busy are scratch space for choose and hold.
	free, busy []*worker
	// round counts dispatch calls.
	round uint64

	nextJob uint64
	seq     uint64
	// stamp is bumped by each walk that marks derivations it visited.
	stamp uint64
	out   []Decision
}

// New returns a Scheduler with no evaluations and no workers. Zero fields
// of cfg get their defaults; an out of range field is an error wrapping
// ErrInvalidConfig.
func New(cfg Config) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()

	return &Scheduler{
		cfg:      cfg,
		less:     lessFunc(cfg.Policy),
		drvs:     make(map[string]*drv),
		evals:    make(map[string]*evaluation),
		jobs:     make(map[string]*job),
		ended:    make(map[string]struct{}),
		projects: make(map[string]*project),
		classes:  make(map[string]*class),
		history:  make(map[historyKey]*historyValue),
	}, nil
}

// Config returns the configuration with its defaults filled in.
func (s *Scheduler) Config() Config {
	return s.cfg
}

func (s *Scheduler) emit(d Decision) {
	s.out = append(s.out, d)
}

// take returns the decisions of the current event and starts a new list.
func (s *Scheduler) take() []Decision {
	out := s.out
	s.out = nil
	return out
}

// AddWorker registers a worker and assigns it jobs, first the derivations
// held for it, see Derivation.HeldFor. A Worker whose fields are invalid
// is rejected with an error wrapping ErrInvalidWorker, a second
// worker with the same ID with one wrapping ErrDuplicate.
func (s *Scheduler) AddWorker(w Worker, now time.Time) ([]Decision, error) {
	if err := validateWorker(w); err != nil {
		return nil, err
	}
	i, found := slices.BinarySearchFunc(s.workers, w.ID, func(x *worker, id string) int {
		return cmp.Compare(x.ID, id)
	})
	if found {
		return nil, fmt.Errorf("add worker %q: %w", w.ID, ErrDuplicate)
	}

	w.Systems = slices.Clone(w.Systems)
	w.Features = slices.Clone(w.Features)
	speed := w.Speed
	if speed == 0 {
		speed = 1
	}
	nw := &worker{Worker: w, speed: speed, store: make(map[string]struct{})}
	s.workers = slices.Insert(s.workers, i, nw)
	s.capacity += float64(nw.Slots) * nw.speed
	s.adoptHolds(nw, now)

	// Derivations that had no worker now wait for a slot.
	for _, c := range s.classOrder {
		if c.ready == 0 || !nw.canRun(c) {
			continue
		}
		for _, q := range c.queues {
			for _, d := range q.items {
				if d.reason == NoWorker {
					d.reason = ""
				}
			}
		}
	}

	s.dispatch(now)
	return s.take(), nil
}

// RemoveWorker unregisters a worker. The derivations of its jobs that are
// not built go back to the queue without costing an attempt, and later
// events naming its jobs return ErrUnknownJob.
func (s *Scheduler) RemoveWorker(id string, now time.Time) ([]Decision, error) {
	i, found := slices.BinarySearchFunc(s.workers, id, func(x *worker, id string) int {
		return cmp.Compare(x.ID, id)
	})
	if !found {
		return nil, fmt.Errorf("remove worker %q: %w", id, ErrUnknownWorker)
	}
	w := s.workers[i]

	for len(w.jobs) > 0 {
		s.releaseJob(w.jobs[0], false, now)
	}
	s.workers = slices.Delete(s.workers, i, i+1)
	s.capacity -= float64(w.Slots) * w.speed

	// Report ready derivations that no remaining worker can build.
	for _, c := range s.classOrder {
		if c.ready == 0 || !w.canRun(c) || s.classHasWorker(c) {
			continue
		}
		for _, q := range c.queues {
			for _, d := range q.items {
				s.setNoWorker(d)
			}
		}
	}

	s.dispatch(now)
	return s.take(), nil
}

// SetWorkerAway marks a worker as away, whose connection dropped and
// whose jobs wait for it to come back, or as back. An away worker keeps
// its jobs and still counts for the systems it builds, but gets no new
// jobs and no job waits for one of its slots. A worker that is back
// takes the derivations held for it.
func (s *Scheduler) SetWorkerAway(id string, away bool, now time.Time) ([]Decision, error) {
	i, found := slices.BinarySearchFunc(s.workers, id, func(x *worker, id string) int {
		return cmp.Compare(x.ID, id)
	})
	if !found {
		return nil, fmt.Errorf("set worker %q away: %w", id, ErrUnknownWorker)
	}
	s.workers[i].away = away
	s.adoptHolds(s.workers[i], now)

	s.dispatch(now)
	return s.take(), nil
}

// ReserveSlots changes by delta the number of a worker's slots that work
// outside the scheduler takes, such as an evaluation the worker runs, so
// that builds go to other workers meanwhile. The count never drops below
// zero.
func (s *Scheduler) ReserveSlots(id string, delta int, now time.Time) ([]Decision, error) {
	i, found := slices.BinarySearchFunc(s.workers, id, func(x *worker, id string) int {
		return cmp.Compare(x.ID, id)
	})
	if !found {
		return nil, fmt.Errorf("reserve slots of worker %q: %w", id, ErrUnknownWorker)
	}
	w := s.workers[i]
	w.reserved = max(0, w.reserved+delta)

	s.dispatch(now)
	return s.take(), nil
}

// ReportStore replaces the Scheduler's record of a worker's store with
// paths, the store paths the worker reports it contains. Placement prefers
// workers that hold a job's inputs. The Scheduler adds the outputs of the
// jobs it assigns to the worker on its own, until the next report.
func (s *Scheduler) ReportStore(workerID string, paths []string) error {
	i, found := slices.BinarySearchFunc(s.workers, workerID, func(x *worker, id string) int {
		return cmp.Compare(x.ID, id)
	})
	if !found {
		return fmt.Errorf("report store of %q: %w", workerID, ErrUnknownWorker)
	}

	store := make(map[string]struct{}, len(paths))
	for _, p := range paths {
		store[p] = struct{}{}
	}
	s.workers[i].store = store
	return nil
}

// JobStarted records when a worker started a job, which the build time of
// its first derivation is measured from. Without it the time of the Assign
// is used.
func (s *Scheduler) JobStarted(jobID string, now time.Time) error {
	j, ok := s.jobs[jobID]
	if !ok {
		return fmt.Errorf("start job %q: %w", jobID, ErrUnknownJob)
	}
	j.since = now
	return nil
}

// SetOutputSize records the NAR size in bytes of all outputs of a
// derivation, such as the size its build reported, so that placing its
// dependents counts what fetching them costs. A derivation the Scheduler
// does not hold is ignored. It returns no decisions: a size takes effect
// at the next placement.
func (s *Scheduler) SetOutputSize(drvPath string, size uint64) {
	if d, ok := s.drvs[drvPath]; ok {
		d.outputSize = size
	}
}

// DerivationBuilt records that a job built one of its derivations, and
// assigns the jobs this unblocks. Its build time feeds the history. A
// second report of the same derivation changes nothing. When it was the
// job's last link, the job's slot is free for these assignments already,
// so a dependent can go to the worker that holds its input; JobFinished
// must still follow.
func (s *Scheduler) DerivationBuilt(jobID, drvPath string, now time.Time) ([]Decision, error) {
	if _, ok := s.ended[jobID]; ok {
		return nil, nil
	}
	j, d, err := s.jobDerivation(jobID, drvPath)
	if err != nil {
		return nil, fmt.Errorf("record built derivation: %w", err)
	}
	if d.state.terminal() {
		return nil, nil
	}

	if !j.since.IsZero() && !now.Before(j.since) {
		s.observe(d.pname, d.class.system, now.Sub(j.since).Seconds()*j.worker.speed)
	}
	j.since = now
	j.worker.store[d.path] = struct{}{}

	s.markBuilt(d, false, now)
	if !slices.ContainsFunc(j.drvs, func(x *drv) bool { return !x.state.terminal() }) {
		s.releaseJob(j, false, now)
		s.ended[jobID] = struct{}{}
	}
	s.dispatch(now)
	return s.take(), nil
}

// DerivationFailed records that a job's derivation failed to build with
// reason, as the worker reported it. Every transitive dependent is reported
// with a DependencyFailed decision and is never built. The job keeps its
// slot until JobFinished.
func (s *Scheduler) DerivationFailed(jobID, drvPath, reason string, now time.Time) ([]Decision, error) {
	if _, ok := s.ended[jobID]; ok {
		return nil, nil
	}
	_, d, err := s.jobDerivation(jobID, drvPath)
	if err != nil {
		return nil, fmt.Errorf("record failed derivation: %w", err)
	}
	if d.state.terminal() {
		return nil, nil
	}

	s.markFailed(d, reason)
	s.dispatch(now)
	return s.take(), nil
}

// JobFinished records that a worker finished or gave up on a job, freeing
// its slot. Derivations of the job that are neither built nor failed go
// back to the queue. Each time that happens to a derivation whose inputs
// were built costs it an attempt, and after Config.MaxAttempts it fails.
func (s *Scheduler) JobFinished(jobID string, now time.Time) ([]Decision, error) {
	if _, ok := s.ended[jobID]; ok {
		delete(s.ended, jobID)
		s.dispatch(now)
		return s.take(), nil
	}
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, fmt.Errorf("finish job %q: %w", jobID, ErrUnknownJob)
	}
	s.releaseJob(j, true, now)
	s.dispatch(now)
	return s.take(), nil
}

// Tick advances time: derivations whose postponement for a peer or hold
// for a worker ended are queued, and jobs are assigned to free slots.
func (s *Scheduler) Tick(now time.Time) []Decision {
	s.expireHolds(now)

	kept := s.postponed[:0]
	for _, d := range s.postponed {
		switch {
		case d.removed || d.state.terminal() || d.state == StateAssigned || d.postponedUntil.IsZero():
			d.postponedUntil = time.Time{}
		case now.Before(d.postponedUntil):
			kept = append(kept, d)
		default:
			d.postponedUntil = time.Time{}
			if d.reason == PostponedForPeer {
				d.reason = ""
			}
			if d.state == StatePostponed {
				s.enqueue(d, now)
			}
		}
	}
	clear(s.postponed[len(kept):])
	s.postponed = kept

	s.dispatch(now)
	return s.take()
}

// PeerBuilding postpones a derivation that a peer node announced it is
// building, expecting it done at eta. Until eta plus Config.PeerSlack the
// derivation is not assigned, and afterwards it is built locally unless
// PeerBuilt came first. A derivation that is unknown, already assigned or
// done is left alone.
func (s *Scheduler) PeerBuilding(drvPath string, eta, now time.Time) []Decision {
	d, ok := s.drvs[drvPath]
	if !ok {
		return nil
	}
	s.postpone(d, eta, now)
	return s.take()
}

// postpone holds d back until eta plus Config.PeerSlack, see PeerBuilding,
// and emits a Waiting decision when it does.
func (s *Scheduler) postpone(d *drv, eta, now time.Time) {
	if d.state.terminal() || d.state == StateAssigned {
		return
	}

	until := eta.Add(s.cfg.PeerSlack)
	if !until.After(now) {
		return
	}
	if d.postponedUntil.IsZero() {
		s.postponed = append(s.postponed, d)
	}
	d.postponedUntil = until
	if d.state == StateReady {
		s.dequeue(d)
		d.state = StatePostponed
	}
	d.reason = PostponedForPeer
	s.emit(Waiting{DrvPath: d.path, Reason: PostponedForPeer, Until: until})
}

// PeerGone ends the postponement of a derivation whose build by a peer
// failed, was cancelled or lapsed, so that it is queued for a local build
// at once instead of when its wait runs out. A derivation that is not
// postponed is left alone. A later PeerBuilding postpones it again.
func (s *Scheduler) PeerGone(drvPath string, now time.Time) []Decision {
	d, ok := s.drvs[drvPath]
	if !ok || d.postponedUntil.IsZero() {
		return nil
	}

	d.postponedUntil = time.Time{}
	s.postponed = slices.DeleteFunc(s.postponed, func(x *drv) bool { return x == d })
	if d.reason == PostponedForPeer {
		d.reason = ""
	}
	if d.state == StatePostponed {
		s.enqueue(d, now)
	}

	s.dispatch(now)
	return s.take()
}

// PeerBuilt records that a peer built a derivation and its outputs can be
// fetched, so it is not built locally. A derivation already assigned to a
// local job stays with that job.
func (s *Scheduler) PeerBuilt(drvPath string, now time.Time) []Decision {
	d, ok := s.drvs[drvPath]
	if !ok || d.state.terminal() || d.state == StateAssigned {
		return nil
	}
	s.markBuilt(d, true, now)
	s.dispatch(now)
	return s.take()
}

// CancelEvaluation drops an evaluation. Derivations that no other
// evaluation contains are dropped, and each job all of whose derivations
// are dropped gets a Cancel decision. No EvaluationDone follows.
func (s *Scheduler) CancelEvaluation(evalID string, now time.Time) ([]Decision, error) {
	e, ok := s.evals[evalID]
	if !ok {
		return nil, fmt.Errorf("cancel evaluation %q: %w", evalID, ErrUnknownEvaluation)
	}
	delete(s.evals, evalID)

	var jobs []*job
	for _, d := range e.drvs {
		wasOwner := d.evals[0] == e
		queued := d.state == StateReady
		if queued && wasOwner {
			// Take it out while evals[0] still names the old owner.
			s.dequeue(d)
		}
		d.evals = slices.DeleteFunc(d.evals, func(x *evaluation) bool { return x == e })

		if len(d.evals) > 0 {
			if queued && wasOwner {
				s.pushReady(d)
			}
			continue
		}

		if queued && !wasOwner {
			s.dequeue(d)
		}
		d.removed = true
		s.leaveWork(d)
		if s.drvs[d.path] == d {
			delete(s.drvs, d.path)
		}
		if d.job != nil && !d.job.cancelled && !slices.Contains(jobs, d.job) {
			jobs = append(jobs, d.job)
		}
	}

	for _, j := range jobs {
		if slices.ContainsFunc(j.drvs, func(d *drv) bool { return !d.removed && !d.state.terminal() }) {
			continue
		}
		j.cancelled = true
		s.emit(Cancel{JobID: j.id, WorkerID: j.worker.ID})
	}

	s.dispatch(now)
	return s.take(), nil
}

// jobDerivation finds a job and one of its derivations by ID and path.
func (s *Scheduler) jobDerivation(jobID, drvPath string) (*job, *drv, error) {
	j, ok := s.jobs[jobID]
	if !ok {
		return nil, nil, fmt.Errorf("job %q: %w", jobID, ErrUnknownJob)
	}
	for _, d := range j.drvs {
		if d.path == drvPath {
			return j, d, nil
		}
	}
	return nil, nil, fmt.Errorf("%q in job %q: %w", drvPath, jobID, ErrUnknownDerivation)
}

// classFor returns the class of a system and a set of features, creating
// it on first use.
func (s *Scheduler) classFor(system string, features []string) *class {
	features = slices.Clone(features)
	slices.Sort(features)
	features = slices.Compact(features)

	key := system + "\x00" + strings.Join(features, "\x00")
	if c, ok := s.classes[key]; ok {
		return c
	}
	c := &class{key: key, system: system, features: features}
	s.classes[key] = c
	s.classOrder = append(s.classOrder, c)
	return c
}

func (s *Scheduler) projectFor(name string) *project {
	if p, ok := s.projects[name]; ok {
		return p
	}
	share, ok := s.cfg.ProjectShares[name]
	if !ok {
		share = 1
	}
	p := &project{name: name, share: share}
	s.projects[name] = p
	return p
}

// classHasWorker reports whether any registered worker can build c.
func (s *Scheduler) classHasWorker(c *class) bool {
	for _, w := range s.workers {
		if w.canRun(c) {
			return true
		}
	}
	return false
}

func (s *Scheduler) setNoWorker(d *drv) {
	if d.reason == NoWorker {
		return
	}
	d.reason = NoWorker
	s.emit(Waiting{DrvPath: d.path, Reason: NoWorker})
}

// releaseJob frees j's slot and puts back the links it did not finish.
// With countAttempt set, each link whose inputs were built costs an
// attempt.
func (s *Scheduler) releaseJob(j *job, countAttempt bool, now time.Time) {
	w := j.worker
	w.running--
	w.jobs = slices.DeleteFunc(w.jobs, func(x *job) bool { return x == j })
	j.project.running--
	if w.exclusive == j {
		w.exclusive = nil
	}
	delete(s.jobs, j.id)

	for _, d := range j.drvs {
		if d.job == j {
			d.job = nil
		}
		if d.removed || d.state != StateAssigned {
			continue
		}
		if d.missing > 0 {
			d.state = StateWaiting
			continue
		}
		if countAttempt {
			d.attempts++
			if d.attempts >= s.cfg.MaxAttempts {
				reason := fmt.Sprintf("%d jobs ended without building it", d.attempts)
				s.emit(GaveUp{DrvPath: d.path, Reason: reason})
				s.markFailed(d, reason)
				continue
			}
		}
		s.enqueue(d, now)
	}
}
