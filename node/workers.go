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
// evaluations and to the scheduler. The hub calls it.
func (d *driver) workerJoined(ctx context.Context, w *protocol.RemoteWorker) {
	hello := w.Hello()
	if hello.Has(protocol.CapEval) {
		d.evalPool.add(w)
	}
	_ = d.post(ctx, func(ctx context.Context) {
		d.updateWorkerRecord(w.ID(), func(r *db.Worker) {
			now := d.now().UTC()
			r.LastSeen = &now
		})
		if !hello.Has(protocol.CapBuild) {
			return
		}
		decisions, err := d.sched.AddWorker(scheduler.Worker{
			ID:       w.ID(),
			Systems:  hello.Systems,
			Features: hello.Features,
			Slots:    hello.MaxJobs,
			Speed:    1,
		}, d.now())
		if err != nil {
			d.log.Error("scheduler rejected a worker", "worker_id", w.ID(), "err", err)
			return
		}
		d.workers[w.ID()] = w
		d.pruneUnsupported()
		d.apply(ctx, decisions)
		d.queryStores(ctx, []*protocol.RemoteWorker{w})
	})
}

// workerLeft removes a worker whose connection ended. The scheduler queues
// the derivations of its jobs again without counting an attempt.
func (d *driver) workerLeft(ctx context.Context, w *protocol.RemoteWorker) {
	d.evalPool.remove(w)
	_ = d.post(ctx, func(ctx context.Context) {
		d.updateWorkerRecord(w.ID(), func(r *db.Worker) {
			now := d.now().UTC()
			r.LastSeen = &now
		})
		if d.workers[w.ID()] != w {
			return
		}
		delete(d.workers, w.ID())
		decisions, err := d.sched.RemoveWorker(w.ID(), d.now())
		if err != nil {
			d.log.Error("scheduler could not remove a worker", "worker_id", w.ID(), "err", err)
			return
		}
		d.log.Info("worker removed; its unfinished jobs are queued again", "worker_id", w.ID())
		d.apply(ctx, decisions)
	})
}

// queryStores asks each worker in ws which outputs of the active
// evaluations its store holds, and reports the answers to the scheduler,
// which prefers to place a job where its inputs are. Called on the Run
// goroutine; the queries run in the background.
func (d *driver) queryStores(ctx context.Context, ws []*protocol.RemoteWorker) {
	seen := map[string]bool{}
	var paths []string
	for _, ae := range d.active {
		for _, b := range ae.builds {
			for _, p := range b.Outputs {
				if p != "" && !seen[p] {
					seen[p] = true
					paths = append(paths, p)
				}
			}
		}
	}
	if len(paths) == 0 || len(paths) > protocol.MaxQueryPaths {
		return
	}
	slices.Sort(paths)

	for _, w := range ws {
		if !w.Hello().Has(protocol.CapCache) {
			continue
		}
		d.goBackground(func() {
			have, err := w.QueryPaths(ctx, paths)
			if err != nil {
				d.log.Debug("store query failed", "worker_id", w.ID(), "err", err)
				return
			}
			_ = d.post(ctx, func(context.Context) {
				if d.workers[w.ID()] != w {
					return
				}
				if err := d.sched.ReportStore(w.ID(), have); err != nil {
					d.log.Debug("scheduler rejected a store report", "worker_id", w.ID(), "err", err)
				}
			})
		})
	}
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
}

var _ web.Workers = (*workerRegistry)(nil)

// Register creates a worker record with the hash of a new random token.
func (r *workerRegistry) Register(ctx context.Context, name string) (string, error) {
	token, err := newToken()
	if err != nil {
		return "", fmt.Errorf("create worker token: %w", err)
	}
	if _, err := r.db.CreateWorker(name, db.HashToken(token), r.now()); err != nil {
		return "", err
	}
	return token, nil
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
			CreatedAt: rec.CreatedAt,
			LastSeen:  rec.LastSeen,
		})
	}
	for i := range out {
		byName[out[i].Name] = &out[i]
	}
	for _, st := range r.hub.Workers() {
		info, ok := byName[st.ID]
		if !ok {
			out = append(out, web.WorkerInfo{Name: st.ID})
			info = &out[len(out)-1]
			byName[st.ID] = info
		}
		connectedAt, lastSeen := st.ConnectedAt.UTC(), st.LastSeen.UTC()
		info.State = web.WorkerConnected
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
	if err := r.db.DeleteWorker(name); err != nil {
		return err
	}
	r.hub.Disconnect(name, "the worker's token was revoked")
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
