package node

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

// driver owns the scheduler and every evaluation and build in progress.
// One goroutine, Run, makes every scheduler call and every build record
// update. Evaluations and jobs run in goroutines of their own and hand
// their results to Run as closures on the events channel.
type driver struct {
	log   *slog.Logger
	db    *db.DB
	cache *cache.Store
	logs  *logStore
	now   func() time.Time

	// evalSlots bounds evaluations that run at once.
	evalSlots chan struct{}
	events    chan func(ctx context.Context)
	wg        sync.WaitGroup
	// evalPool lists the connected workers that evaluate.
	evalPool *workerPool

	// The fields below are used only by the Run goroutine.
	sched *scheduler.Scheduler
	// workers are the connected workers that build, by ID.
	workers map[string]*protocol.RemoteWorker
	active  map[uint64]*activeEval
	jobs    map[string]context.CancelFunc
	// faults keeps the last worker fault, as opposed to a failed builder,
	// of each derivation, for the build record if the scheduler gives up
	// on it after too many attempts.
	faults map[string]string
}

// activeEval is an evaluation whose graph the scheduler holds.
type activeEval struct {
	eval db.Evaluation
	// builds maps each .drv store path of the graph to its build record.
	builds map[string]*db.Build
}

func newDriver(log *slog.Logger, d *db.DB, c *cache.Store, logs *logStore, maxEvals int) (*driver, error) {
	sched, err := scheduler.New(scheduler.Config{})
	if err != nil {
		return nil, err
	}
	return &driver{
		log:       log.With("component", "driver"),
		db:        d,
		cache:     c,
		logs:      logs,
		now:       time.Now,
		evalSlots: make(chan struct{}, maxEvals),
		events:    make(chan func(context.Context), 64),
		evalPool:  newWorkerPool(),
		sched:     sched,
		workers:   map[string]*protocol.RemoteWorker{},
		active:    map[uint64]*activeEval{},
		jobs:      map[string]context.CancelFunc{},
		faults:    map[string]string{},
	}, nil
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
	if err := d.resume(ctx); err != nil {
		return err
	}

	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			d.wg.Wait()
			return nil
		case fn := <-d.events:
			fn(ctx)
		case <-ticker.C:
			d.apply(ctx, d.sched.Tick(d.now()))
		}
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
