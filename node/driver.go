package node

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// driverConfig configures a driver. Zero fields get the defaults that
// newDriver documents.
type driverConfig struct {
	// MaxEvaluations bounds evaluations that run at once. Default 1.
	MaxEvaluations int
	// UnsupportedTimeout is how long a derivation may wait for a worker
	// with its system and features before it fails. Negative fails it at
	// once; zero means DefaultUnsupportedTimeout.
	UnsupportedTimeout time.Duration
	// NoEvalWorkerReason says why no worker evaluates when none is
	// connected, for the evaluation record and the log.
	NoEvalWorkerReason string
	// RetryDelay is the first delay before a declined job is offered
	// again; it doubles up to maxRetryDelay. Default 1 s.
	RetryDelay time.Duration
	// HistoryInterval is how often the scheduler's build time estimates
	// are stored. Default 1 min.
	HistoryInterval time.Duration
	// StoreQueryTimeout bounds the wait for the workers' answers to the
	// store query sent before a new graph goes to the scheduler. A worker
	// that answers later is left out of that graph's first placements.
	// Default 10 s.
	StoreQueryTimeout time.Duration
	// WorkerLease is how long the jobs of a worker whose connection
	// dropped wait for it to reconnect before they are queued again.
	// Zero queues them at once.
	WorkerLease time.Duration
	// FaultRest is how long a worker that could not start nix gets no
	// new jobs, so that the next attempts go to other workers. Default
	// 1 min.
	FaultRest time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Scheduler configures the scheduler. Its JobIDPrefix is replaced by
	// a prefix unique to this start of the node.
	Scheduler scheduler.Config
}

// maxRetryDelay bounds the delay before a declined job is offered again.
const maxRetryDelay = 30 * time.Second

// driver owns the scheduler and every evaluation and build in progress.
// One goroutine, Run, makes every scheduler call and every build record
// update. Evaluations and jobs run in goroutines of their own and hand
// their results to Run as closures on the events channel.
type driver struct {
	log   *slog.Logger
	db    *db.DB
	cache *cache.Store
	logs  *logStore
	cfg   driverConfig
	now   func() time.Time

	// evalSlots bounds evaluations that run at once.
	evalSlots chan struct{}
	events    chan func(ctx context.Context)
	wg        sync.WaitGroup
	// evalPool lists the connected workers that evaluate.
	evalPool *workerPool
	// away lists the workers whose jobs wait for them to reconnect.
	away awayWorkers
	// reservations counts the evaluations running on each worker.
	reservations slotReservations
	// mesh is set by startMesh before Run, and nil without the mesh.
	mesh *meshLink

	// The fields below are used only by the Run goroutine.
	sched *scheduler.Scheduler
	// workers are the connected workers that build, by ID.
	workers map[string]*protocol.RemoteWorker
	// links follows each worker that the scheduler counts, connected or
	// away, by ID.
	links map[string]*workerLink
	// reserved is the number of slots of each worker that the scheduler
	// counts as taken by evaluations, see syncReservations.
	reserved map[string]int
	active   map[uint64]*activeEval
	jobs     map[string]context.CancelFunc
	// faults keeps the last worker fault, as opposed to a failed builder,
	// of each derivation, for the build record if the scheduler gives up
	// on it after too many attempts.
	faults map[string]string
	// unsupported maps each derivation that waits for a worker with its
	// system and features to when the wait started.
	unsupported map[string]time.Time
	// started is when Run started.
	started time.Time
	// historySaved is when the build time estimates were last stored.
	historySaved time.Time
	// settling is set while apply ends evaluations, so that the apply
	// calls it makes do not start over.
	settling bool
}

// activeEval is an evaluation whose graph the scheduler holds.
type activeEval struct {
	eval db.Evaluation
	// builds maps each .drv store path of the graph to its build record.
	builds map[string]*db.Build
	// failedByNode is set when the node failed builds that the scheduler
	// still holds, such as those no worker can run. The scheduler then
	// never reports the evaluation done, so the node ends it.
	failedByNode bool
}

// newDriver returns a driver with an empty scheduler whose job IDs start
// with a prefix unique to this start of the node, and with the build time
// estimates stored by earlier starts.
func newDriver(log *slog.Logger, d *db.DB, c *cache.Store, logs *logStore, cfg driverConfig) (*driver, error) {
	if cfg.MaxEvaluations == 0 {
		cfg.MaxEvaluations = 1
	}
	if cfg.UnsupportedTimeout == 0 {
		cfg.UnsupportedTimeout = DefaultUnsupportedTimeout
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = time.Second
	}
	if cfg.HistoryInterval <= 0 {
		cfg.HistoryInterval = time.Minute
	}
	if cfg.FaultRest <= 0 {
		cfg.FaultRest = time.Minute
	}
	if cfg.StoreQueryTimeout <= 0 {
		cfg.StoreQueryTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	// Job IDs end up in build records, so each start of the node needs
	// IDs of its own.
	schedCfg := cfg.Scheduler
	schedCfg.JobIDPrefix = "job-" + strconv.FormatInt(cfg.Now().UnixMilli(), 36) + "-"
	sched, err := scheduler.New(schedCfg)
	if err != nil {
		return nil, err
	}
	logSchedulerConfig(log.With("component", "scheduler"), d, sched.Config())
	drv := &driver{
		log:         log.With("component", "driver"),
		db:          d,
		cache:       c,
		logs:        logs,
		cfg:         cfg,
		now:         cfg.Now,
		evalSlots:   make(chan struct{}, cfg.MaxEvaluations),
		events:      make(chan func(context.Context), 64),
		evalPool:    newWorkerPool(),
		sched:       sched,
		workers:     map[string]*protocol.RemoteWorker{},
		links:       map[string]*workerLink{},
		reserved:    map[string]int{},
		active:      map[uint64]*activeEval{},
		jobs:        map[string]context.CancelFunc{},
		faults:      map[string]string{},
		unsupported: map[string]time.Time{},
	}
	if err := drv.loadHistory(); err != nil {
		return nil, err
	}
	return drv, nil
}

// Enqueue schedules a queued evaluation. It implements web.Evaluator.
func (d *driver) Enqueue(ctx context.Context, evalID uint64) error {
	return d.post(ctx, func(ctx context.Context) { d.startEvaluation(ctx, evalID) })
}

// post hands fn to the Run goroutine. It fails when ctx ends first, such
// as while the node shuts down.
func (d *driver) post(ctx context.Context, fn func(context.Context)) error {
	select {
	case d.events <- fn:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run resumes the evaluations a previous run left unfinished, then runs
// events until ctx is cancelled. It returns after every evaluation and job
// goroutine has exited. Work cut off by the cancellation stays in the
// database as unfinished and is resumed by the next Run.
func (d *driver) Run(ctx context.Context) error {
	d.started = d.now()
	if err := d.resume(ctx); err != nil {
		return err
	}

	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			d.wg.Wait()
			d.saveHistory()
			return nil
		case fn := <-d.events:
			fn(ctx)
		case <-ticker.C:
			d.tick(ctx)
		}
	}
}

// tick advances the scheduler's time, fails the derivations that waited
// too long for a worker and stores the build time estimates when they are
// due. Called on the Run goroutine.
func (d *driver) tick(ctx context.Context) {
	d.syncReservations(ctx)
	d.apply(ctx, d.sched.Tick(d.now()))
	d.expireUnsupported(ctx)
	if d.now().Sub(d.historySaved) >= d.cfg.HistoryInterval {
		d.saveHistory()
	}
}

// goBackground runs fn in a goroutine that Run waits for.
func (d *driver) goBackground(fn func()) {
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		fn()
	}()
}
