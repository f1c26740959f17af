package node

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/web"
)

// localWorkerID is the ID of the node's in-process worker.
const localWorkerID = "local"

// workerPool is the set of connected workers that evaluate. Evaluation
// goroutines read it while the hub's callbacks change it, so it has a
// lock of its own.
type workerPool struct {
	// mu guards the fields below.
	mu      sync.Mutex
	workers []*protocol.RemoteWorker
	// changed is closed and replaced whenever workers changes.
	changed chan struct{}
}

func newWorkerPool() *workerPool {
	return &workerPool{changed: make(chan struct{})}
}

func (p *workerPool) add(w *protocol.RemoteWorker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.workers = append(p.workers, w)
	slices.SortFunc(p.workers, func(a, b *protocol.RemoteWorker) int { return strings.Compare(a.ID(), b.ID()) })
	close(p.changed)
	p.changed = make(chan struct{})
}

func (p *workerPool) remove(w *protocol.RemoteWorker) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.workers = slices.DeleteFunc(p.workers, func(x *protocol.RemoteWorker) bool { return x == w })
	close(p.changed)
	p.changed = make(chan struct{})
}

// snapshot returns the connected workers that evaluate.
func (p *workerPool) snapshot() []*protocol.RemoteWorker {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.workers)
}

func (p *workerPool) size() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.workers)
}

// wait returns the connected workers, waiting until there is one or ctx
// ends.
func (p *workerPool) wait(ctx context.Context) ([]*protocol.RemoteWorker, error) {
	for {
		p.mu.Lock()
		ws := slices.Clone(p.workers)
		changed := p.changed
		p.mu.Unlock()
		if len(ws) > 0 {
			return ws, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// workerJoined makes a worker that completed its handshake available to
// evaluations and to the scheduler. A worker that comes back within the
// lease of its dropped connection, announcing the same systems, features
// and slots, takes up its jobs again, at the speed it had. Any other
// joins the scheduler at the speed stored in its record. The hub calls
// it.
func (d *driver) workerJoined(ctx context.Context, w *protocol.RemoteWorker) {
	hello := w.Hello()
	if hello.Has(protocol.CapEval) {
		d.evalPool.add(w)
	}
	_ = d.post(ctx, func(ctx context.Context) {
		// A worker without a record, such as one revoked while it
		// connected, builds at the default speed.
		speed := db.DefaultWorkerSpeed
		d.updateWorkerRecord(w.ID(), func(r *db.Worker) {
			now := d.now().UTC()
			r.LastSeen = &now
			speed = r.EffectiveSpeed()
		})
		if l := d.links[w.ID()]; l != nil {
			if l.isAway() && sameShape(l.hello, hello) {
				l.set(w)
				d.away.clear(w.ID())
				d.workers[w.ID()] = w
				d.log.Info("worker reconnected within its lease; its jobs go on", "worker_id", w.ID())
				decisions, err := d.sched.SetWorkerAway(w.ID(), false, d.now())
				if err != nil {
					d.log.Error("scheduler could not mark a worker back", "worker_id", w.ID(), "err", err)
				}
				d.apply(ctx, decisions)
				d.queryStores(ctx, []*protocol.RemoteWorker{w})
				return
			}
			d.removeWorker(ctx, l, "it reconnected with other systems, features or slots")
		}

		// Builds held for the worker since the node restarted stay with
		// it when it reports them: it is still building them, or built
		// them since. AddWorker gives them to it. The others go to any
		// worker.
		var reported []string
		if hello.Has(protocol.CapBuild) {
			reported = hello.DetachedBuilds
		}
		if len(reported) > 0 {
			d.log.Info("worker reports builds that went on after an earlier connection ended", "worker_id", w.ID(), "builds", len(reported))
		}
		d.apply(ctx, d.sched.ReleaseHolds(w.ID(), reported, d.now()))
		if !hello.Has(protocol.CapBuild) {
			return
		}
		decisions, err := d.sched.AddWorker(scheduler.Worker{
			ID:       w.ID(),
			Systems:  hello.Systems,
			Features: hello.Features,
			Slots:    hello.MaxJobs,
			Speed:    speed,
		}, d.now())
		if err != nil {
			d.log.Error("scheduler rejected a worker", "worker_id", w.ID(), "err", err)
			return
		}
		d.workers[w.ID()] = w
		d.links[w.ID()] = newWorkerLink(w)
		d.pruneUnsupported()
		d.apply(ctx, decisions)
		d.syncReservations(ctx)
		d.queryStores(ctx, []*protocol.RemoteWorker{w})
	})
}

// workerLeft handles the end of a worker's connection. A worker that
// stopped, or that the node disconnected, is removed at once and the
// scheduler queues the derivations of its jobs again without counting an
// attempt. A dropped connection keeps the worker's jobs for its lease, so
// that a build that goes on without a connection is not started again
// elsewhere.
func (d *driver) workerLeft(ctx context.Context, w *protocol.RemoteWorker) {
	d.evalPool.remove(w)
	_ = d.post(ctx, func(ctx context.Context) {
		d.updateWorkerRecord(w.ID(), func(r *db.Worker) {
			now := d.now().UTC()
			r.LastSeen = &now
		})
		l := d.links[w.ID()]
		if l == nil || d.workers[w.ID()] != w {
			return
		}
		delete(d.workers, w.ID())
		if !w.Dropped() || d.cfg.WorkerLease <= 0 {
			d.removeWorker(ctx, l, "its connection ended")
			return
		}

		outage := l.set(nil)
		d.away.set(w.ID(), d.now().Add(d.cfg.WorkerLease), w.Hello())
		d.log.Info("worker connection dropped; its jobs wait for it to reconnect", "worker_id", w.ID(), "lease", d.cfg.WorkerLease)
		decisions, err := d.sched.SetWorkerAway(w.ID(), true, d.now())
		if err != nil {
			d.log.Error("scheduler could not mark a worker away", "worker_id", w.ID(), "err", err)
		}
		d.apply(ctx, decisions)
		time.AfterFunc(d.cfg.WorkerLease, func() {
			_ = d.post(ctx, func(ctx context.Context) {
				if d.links[l.id] == l && l.awayFor(outage) {
					d.removeWorker(ctx, l, "it did not reconnect within its lease")
				}
			})
		})
	})
}

// workerRevoked removes a worker that is away after its token was
// revoked: it cannot reconnect, so its jobs need not wait for it. A
// connected worker is removed when the hub closes its connection.
func (d *driver) workerRevoked(ctx context.Context, id string) {
	_ = d.post(ctx, func(ctx context.Context) {
		if l := d.links[id]; l != nil && l.isAway() {
			d.removeWorker(ctx, l, "its token was revoked")
		}
	})
}

// removeWorker ends the link of a worker and removes the worker from the
// scheduler, which queues the derivations of its jobs again without
// counting an attempt. Called on the Run goroutine.
func (d *driver) removeWorker(ctx context.Context, l *workerLink, reason string) {
	l.remove()
	d.away.clear(l.id)
	delete(d.reserved, l.id)
	delete(d.links, l.id)
	delete(d.workers, l.id)
	decisions, err := d.sched.RemoveWorker(l.id, d.now())
	if err != nil {
		d.log.Error("scheduler could not remove a worker", "worker_id", l.id, "err", err)
		return
	}
	d.log.Info("worker removed; its unfinished jobs are queued again", "worker_id", l.id, "reason", reason)
	d.apply(ctx, decisions)
}

// storeReport is a worker's answer to a store query.
type storeReport struct {
	worker *protocol.RemoteWorker
	// have lists the queried paths the worker's store holds.
	have []string
	// missingNarSize is the NAR bytes of the queried paths the worker
	// lacks, as far as the worker or the node's cache know them.
	missingNarSize uint64
}

// storeQueryPaths returns the sorted output paths of the active
// evaluations and of extra, the builds of a graph about to be added. It
// returns nil when there are none or more than one PathQuery may carry.
// Called on the Run goroutine.
func (d *driver) storeQueryPaths(extra []db.Build) []string {
	seen := map[string]bool{}
	var paths []string
	add := func(b *db.Build) {
		for _, p := range b.Outputs {
			if p != "" && !seen[p] {
				seen[p] = true
				paths = append(paths, p)
			}
		}
	}
	for _, ae := range d.active {
		for _, b := range ae.builds {
			add(b)
		}
	}
	for i := range extra {
		add(&extra[i])
	}
	if len(paths) == 0 || len(paths) > protocol.MaxQueryPaths {
		return nil
	}
	slices.Sort(paths)
	return paths
}

// cacheWorkers returns the connected workers that build and answer store
// queries, in ID order. Called on the Run goroutine.
func (d *driver) cacheWorkers() []*protocol.RemoteWorker {
	var ws []*protocol.RemoteWorker
	for _, w := range d.workers {
		if w.Hello().Has(protocol.CapCache) {
			ws = append(ws, w)
		}
	}
	slices.SortFunc(ws, func(a, b *protocol.RemoteWorker) int { return strings.Compare(a.ID(), b.ID()) })
	return ws
}

// queryStore asks w which of paths its store holds. A worker does not know
// the sizes of paths it lacks and sends 0, so the node adds up the
// NarSize of each lacking path that its cache holds.
func (d *driver) queryStore(ctx context.Context, w *protocol.RemoteWorker, paths []string) (storeReport, error) {
	have, missingSize, err := w.QueryPaths(ctx, paths)
	if err != nil {
		return storeReport{}, err
	}
	if missingSize == 0 {
		missingSize = d.missingNarSize(ctx, paths, have)
	}
	return storeReport{worker: w, have: have, missingNarSize: missingSize}, nil
}

// missingNarSize returns the sum of the NarSizes of the paths that are not
// in have and that the node's cache holds. A lookup that fails counts 0:
// the size only informs the log and placement estimates.
func (d *driver) missingNarSize(ctx context.Context, paths, have []string) uint64 {
	held := make(map[string]bool, len(have))
	for _, p := range have {
		held[p] = true
	}
	var lacking []string
	for _, p := range paths {
		if !held[p] {
			lacking = append(lacking, p)
		}
	}
	if len(lacking) == 0 {
		return 0
	}
	notCached, err := d.cache.Missing(ctx, lacking)
	if err != nil {
		d.log.Debug("look up paths a worker lacks in the cache failed", "err", err)
		return 0
	}
	isMissing := make(map[string]bool, len(notCached))
	for _, p := range notCached {
		isMissing[p] = true
	}
	var total uint64
	for _, size := range d.narSizes(ctx, lacking, isMissing) {
		total += size
	}
	return total
}

// queryStoresBefore asks each connected cache worker which outputs of the
// active evaluations and of builds its store holds, and waits for the
// answers for at most driverConfig.StoreQueryTimeout. It runs outside the
// Run goroutine, before a graph is added, so that the scheduler knows where
// the inputs are when it places the graph's first jobs. A worker that
// fails or does not answer in time is left out.
func (d *driver) queryStoresBefore(ctx context.Context, builds []db.Build) []storeReport {
	var paths []string
	var ws []*protocol.RemoteWorker
	collected := make(chan struct{})
	if err := d.post(ctx, func(context.Context) {
		defer close(collected)
		paths = d.storeQueryPaths(builds)
		ws = d.cacheWorkers()
	}); err != nil {
		return nil
	}
	select {
	case <-collected:
	case <-ctx.Done():
		return nil
	}
	if len(paths) == 0 || len(ws) == 0 {
		return nil
	}

	ctx, cancel := context.WithTimeout(ctx, d.cfg.StoreQueryTimeout)
	defer cancel()
	reports := make([]storeReport, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := d.queryStore(ctx, w, paths)
			if err != nil {
				d.log.Debug("store query failed", "worker_id", w.ID(), "err", err)
				return
			}
			reports[i] = r
		}()
	}
	wg.Wait()
	return slices.DeleteFunc(reports, func(r storeReport) bool { return r.worker == nil })
}

// queryStores asks each worker in ws which outputs of the active
// evaluations its store holds, and reports the answers to the scheduler,
// which prefers to place a job where its inputs are. Called on the Run
// goroutine; the queries run in the background.
func (d *driver) queryStores(ctx context.Context, ws []*protocol.RemoteWorker) {
	paths := d.storeQueryPaths(nil)
	if paths == nil {
		return
	}
	for _, w := range ws {
		if !w.Hello().Has(protocol.CapCache) {
			continue
		}
		d.goBackground(func() {
			r, err := d.queryStore(ctx, w, paths)
			if err != nil {
				d.log.Debug("store query failed", "worker_id", w.ID(), "err", err)
				return
			}
			_ = d.post(ctx, func(context.Context) { d.reportStore(r) })
		})
	}
}

// reportStore hands a worker's store report to the scheduler, unless the
// worker left since. Called on the Run goroutine.
func (d *driver) reportStore(r storeReport) {
	id := r.worker.ID()
	if d.workers[id] != r.worker {
		return
	}
	if err := d.sched.ReportStore(id, r.have); err != nil {
		d.log.Debug("scheduler rejected a store report", "worker_id", id, "err", err)
		return
	}
	d.log.Debug("worker store reported", "worker_id", id, "held_paths", len(r.have), "missing_nar_size", r.missingNarSize)
}

// updateWorkerRecord applies fn to a worker's record. A worker without a
// record, such as one revoked while it was connected, is skipped.
func (d *driver) updateWorkerRecord(id string, fn func(r *db.Worker)) {
	if err := d.db.UpdateWorker(id, fn); err != nil && !errors.Is(err, db.ErrNotFound) {
		d.log.Error("store worker record failed", "worker_id", id, "err", err)
	}
}

// workerRegistry implements web.Workers with the worker records and the
// hub's connected workers.
type workerRegistry struct {
	db  *db.DB
	hub *protocol.Hub
	now func() time.Time
	// away returns a worker that is not connected but keeps its jobs,
	// and false for any other. Nil reports none.
	away func(id string) (awayWorker, bool)
	// revoked, when set, is called after a worker's token was revoked,
	// so that the jobs of a worker that is away go to others at once.
	revoked func(id string)
}

var _ web.Workers = (*workerRegistry)(nil)

// Register creates a worker record of the given build speed with the
// hash of a new random token.
func (r *workerRegistry) Register(ctx context.Context, name string, speed float64) (string, error) {
	if name == localWorkerID {
		return "", fmt.Errorf("worker name %q: %w: pick another name", name, web.ErrInProcessWorker)
	}
	token, err := newToken()
	if err != nil {
		return "", fmt.Errorf("create worker token: %w", err)
	}
	if _, err := r.db.CreateWorkerWithSpeed(name, db.HashToken(token), speed, r.now()); err != nil {
		return "", err
	}
	return token, nil
}

// SetSpeed stores a new build speed in a worker's record. A connected
// worker keeps its old speed in the scheduler until it joins again. The
// in-process worker's speed comes from Config.WorkerSpeed at every start,
// so it cannot be set here.
func (r *workerRegistry) SetSpeed(ctx context.Context, name string, speed float64) error {
	if name == localWorkerID {
		return fmt.Errorf("worker %q: %w: give gradient serve --worker-speed, or worker_speed in the configuration file", name, web.ErrSpeedFromConfig)
	}
	return r.db.SetWorkerSpeed(name, speed)
}

// List merges the worker records with the connected workers.
func (r *workerRegistry) List(ctx context.Context) ([]web.WorkerInfo, error) {
	records, err := r.db.ListWorkers()
	if err != nil {
		return nil, err
	}
	byName := map[string]*web.WorkerInfo{}
	var out []web.WorkerInfo
	for _, rec := range records {
		out = append(out, web.WorkerInfo{
			Name:      rec.Name,
			State:     web.WorkerDisconnected,
			Builds:    rec.Builds,
			Speed:     rec.EffectiveSpeed(),
			CreatedAt: rec.CreatedAt,
			LastSeen:  rec.LastSeen,
		})
	}
	for i := range out {
		byName[out[i].Name] = &out[i]
		if r.away == nil {
			continue
		}
		if aw, ok := r.away(out[i].Name); ok {
			until := aw.until.UTC()
			out[i].State = web.WorkerAway
			out[i].AwayUntil = &until
			// What it announced still holds: it comes back with the same
			// systems, features and slots, or its jobs go elsewhere.
			out[i].Systems = aw.hello.Systems
			out[i].Features = aw.hello.Features
			out[i].MaxJobs = aw.hello.MaxJobs
		}
	}
	for _, st := range r.hub.Workers() {
		info, ok := byName[st.ID]
		if !ok {
			out = append(out, web.WorkerInfo{Name: st.ID, Speed: db.DefaultWorkerSpeed})
			info = &out[len(out)-1]
			byName[st.ID] = info
		}
		connectedAt, lastSeen := st.ConnectedAt.UTC(), st.LastSeen.UTC()
		info.State = web.WorkerConnected
		info.AwayUntil = nil
		info.ConnectedAt = &connectedAt
		info.LastSeen = &lastSeen
		for _, c := range st.Hello.Capabilities {
			info.Capabilities = append(info.Capabilities, string(c))
		}
		info.Systems = st.Hello.Systems
		info.Features = st.Hello.Features
		info.MaxJobs = st.Hello.MaxJobs
		info.RunningJobs = st.RunningJobs
		info.CPUs = st.Hello.CPUs
		info.MemoryBytes = st.Hello.MemoryBytes
		info.Load1 = st.Heartbeat.Load1
		info.FreeDiskBytes = st.Heartbeat.FreeDiskBytes
	}
	slices.SortFunc(out, func(a, b web.WorkerInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Revoke deletes the worker's record and token and disconnects it.
func (r *workerRegistry) Revoke(ctx context.Context, name string) error {
	if name == localWorkerID {
		return fmt.Errorf("worker %q: %w: to run the node without it, restart gradient serve with --no-worker", name, web.ErrInProcessWorker)
	}
	if err := r.db.DeleteWorker(name); err != nil {
		return err
	}
	r.hub.Disconnect(name, "the worker's token was revoked")
	if r.revoked != nil {
		r.revoked(name)
	}
	return nil
}

// authenticate maps a worker token to the worker's name for the hub.
func (r *workerRegistry) authenticate(ctx context.Context, token string) (string, error) {
	w, err := r.db.WorkerByToken(token)
	if errors.Is(err, db.ErrNotFound) {
		return "", protocol.ErrInvalidToken
	}
	if err != nil {
		return "", err
	}
	return w.Name, nil
}
