package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/gradient-ci/gradient/protocol"
)

// maxEvalAttempts bounds how often an evaluation, or one shard of it,
// starts again because its worker disconnected.
const maxEvalAttempts = 5

// runEvaluation evaluates req on the connected workers that evaluate. With
// one such worker it evaluates everything there. With more, it lists the
// entry points on one and shards the evaluation of their drvPaths across
// all of them, then merges the derivation graphs. A worker that
// disconnects is replaced by another. A job that a worker declines is
// offered again after a growing delay, without counting an attempt.
func (d *driver) runEvaluation(ctx context.Context, log *slog.Logger, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	delay := d.cfg.RetryDelay
	// faulty lists the workers that could not run nix for this
	// evaluation; the others take over.
	faulty := map[string]bool{}
	var lastFault error
	for attempt := 1; ; {
		ws, err := d.evalPool.wait(ctx)
		if err != nil {
			return protocol.EvalResult{}, err
		}
		ws = slices.DeleteFunc(ws, func(w *protocol.RemoteWorker) bool { return faulty[w.ID()] })
		if len(ws) == 0 {
			return protocol.EvalResult{}, fmt.Errorf("no connected worker that evaluates could run nix; fix nix on the workers and evaluate again: %w", lastFault)
		}
		var res protocol.EvalResult
		if len(ws) == 1 {
			res, err = d.evaluateOn(ctx, ws[0], req, progress)
			if errors.Is(err, protocol.ErrWorkerFault) {
				err = &workerFaultError{id: ws[0].ID(), err: err}
			}
		} else {
			res, err = d.evaluateSharded(ctx, log, ws, req, progress)
		}
		if fe := (*workerFaultError)(nil); errors.As(err, &fe) {
			log.Warn("a worker could not run nix; evaluating on the others", "worker_id", fe.id, "err", fe.err)
			fmt.Fprintf(progress, "worker %s could not run nix: %v\n", fe.id, fe.err)
			faulty[fe.id] = true
			lastFault = fe
			continue
		}
		if errors.Is(err, protocol.ErrJobDeclined) {
			log.Info("a worker declined the evaluation; offering it again", "delay", delay, "err", err)
			if err := sleepContext(ctx, delay); err != nil {
				return protocol.EvalResult{}, err
			}
			delay = min(2*delay, maxRetryDelay)
			continue
		}
		if errors.Is(err, protocol.ErrWorkerGone) && attempt < maxEvalAttempts {
			log.Warn("a worker disconnected during the evaluation; evaluating again", "attempt", attempt, "err", err)
			attempt++
			continue
		}
		return res, err
	}
}

// evaluateSharded lists the entry points on ws[0], evaluates them in one
// shard per worker and merges the results.
func (d *driver) evaluateSharded(ctx context.Context, log *slog.Logger, ws []*protocol.RemoteWorker, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	listReq := req
	listReq.ListOnly = true
	list, err := d.evaluateOn(ctx, ws[0], listReq, progress)
	if errors.Is(err, protocol.ErrWorkerFault) {
		return protocol.EvalResult{}, &workerFaultError{id: ws[0].ID(), err: err}
	}
	if err != nil {
		return protocol.EvalResult{}, err
	}
	var attrs []string
	for _, ep := range list.EntryPoints {
		if ep.Error == "" && ep.DrvPath == "" {
			attrs = append(attrs, ep.Attr)
		}
	}
	if len(attrs) == 0 {
		return list, nil
	}
	// Shards fetch the flake themselves, so it must be pinned. A dirty
	// git tree is not: everything is evaluated on the worker that listed.
	if !isLocked(list.Flake) {
		log.Info("flake source is not locked: evaluating on one worker", "locked_url", list.Flake.LockedURL)
		res, err := d.evaluateOn(ctx, ws[0], req, progress)
		if errors.Is(err, protocol.ErrWorkerFault) {
			err = &workerFaultError{id: ws[0].ID(), err: err}
		}
		return res, err
	}

	n := min(len(ws), len(attrs))
	shards := make([][]string, n)
	for i, a := range attrs {
		shards[i%n] = append(shards[i%n], a)
	}
	log.Info("evaluating entry points in shards", "entry_points", len(attrs), "shards", n)

	results := make([]protocol.EvalResult, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range shards {
		wg.Add(1)
		go func() {
			defer wg.Done()
			shardReq := protocol.EvalRequest{FlakeRef: list.Flake.LockedURL, EntryPoints: shards[i]}
			results[i], errs[i] = d.evaluateShard(ctx, log, ws[i], i, shardReq, progress)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return protocol.EvalResult{}, err
	}
	return mergeShards(list, results), nil
}

// evaluateShard evaluates one shard on w, and on another connected worker
// each time the one it runs on disconnects, cannot run nix, or declines
// the shard. A declined shard waits a growing delay first and costs no
// attempt. When no worker is left that could run nix, it returns a
// *workerFaultError.
func (d *driver) evaluateShard(ctx context.Context, log *slog.Logger, w *protocol.RemoteWorker, shard int, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	delay := d.cfg.RetryDelay
	faulty := map[string]bool{}
	for attempt, moves := 1, 1; ; moves++ {
		res, err := d.evaluateOn(ctx, w, req, progress)
		declined := errors.Is(err, protocol.ErrJobDeclined)
		fault := errors.Is(err, protocol.ErrWorkerFault)
		if fault {
			faulty[w.ID()] = true
			log.Warn("a worker could not run nix; moving its evaluation shard", "shard", shard, "worker_id", w.ID(), "err", err)
		}
		if !declined && !fault && (!errors.Is(err, protocol.ErrWorkerGone) || attempt >= maxEvalAttempts) {
			if err != nil {
				return res, fmt.Errorf("evaluate shard %d on worker %q: %w", shard, w.ID(), err)
			}
			return res, nil
		}
		if declined {
			log.Info("worker declined an evaluation shard; offering it again", "shard", shard, "worker_id", w.ID(), "delay", delay, "err", err)
			if err := sleepContext(ctx, delay); err != nil {
				return protocol.EvalResult{}, err
			}
			delay = min(2*delay, maxRetryDelay)
		} else {
			attempt++
		}
		ws, werr := d.evalPool.wait(ctx)
		if werr != nil {
			return protocol.EvalResult{}, werr
		}
		ws = slices.DeleteFunc(ws, func(x *protocol.RemoteWorker) bool { return faulty[x.ID()] })
		if len(ws) == 0 {
			return protocol.EvalResult{}, &workerFaultError{id: w.ID(), err: err}
		}
		next := ws[(shard+moves)%len(ws)]
		if !declined && !fault {
			log.Warn("worker disconnected during an evaluation shard; moving it", "shard", shard, "from", w.ID(), "to", next.ID())
		}
		w = next
	}
}

// mergeShards combines the listing with the shards' results: entry points
// in the listing's order, and the derivations of all shards, each once.
// Each shard lists inputs before their dependents, and so does the
// concatenation with repeats dropped.
func mergeShards(list protocol.EvalResult, shards []protocol.EvalResult) protocol.EvalResult {
	evaluated := map[string]protocol.EntryPoint{}
	seen := map[string]bool{}
	out := protocol.EvalResult{Flake: list.Flake}
	for _, r := range shards {
		for _, ep := range r.EntryPoints {
			evaluated[ep.Attr] = ep
		}
		for _, drv := range r.Derivations {
			if !seen[drv.DrvPath] {
				seen[drv.DrvPath] = true
				out.Derivations = append(out.Derivations, drv)
			}
		}
	}
	for _, ep := range list.EntryPoints {
		if ep.Error == "" {
			if got, ok := evaluated[ep.Attr]; ok {
				ep = got
			} else {
				ep.Error = "gradient: the shard that evaluated this attribute returned no result for it"
			}
		}
		out.EntryPoints = append(out.EntryPoints, ep)
	}
	return out
}

// isLocked reports whether a flake's locked URL pins its source by a
// revision or a NAR hash, so that every worker fetches the same source. A
// dirty git tree has neither.
func isLocked(f protocol.LockedFlake) bool {
	if f.Revision != "" {
		return true
	}
	_, query, _ := strings.Cut(f.LockedURL, "?")
	for _, kv := range strings.Split(query, "&") {
		if strings.HasPrefix(kv, "narHash=") {
			return true
		}
	}
	return false
}

// workerFaultError is an evaluation step that failed because its worker
// could not run nix, see protocol.ErrWorkerFault.
type workerFaultError struct {
	id  string
	err error
}

func (e *workerFaultError) Error() string {
	return fmt.Sprintf("worker %q could not run nix: %v", e.id, e.err)
}

func (e *workerFaultError) Unwrap() error { return e.err }

// evaluateOn runs req on w while the scheduler counts one of w's slots as
// taken, so that builds go to other workers meanwhile instead of being
// declined by w.
func (d *driver) evaluateOn(ctx context.Context, w *protocol.RemoteWorker, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	d.reservations.add(w.ID(), 1)
	_ = d.post(ctx, d.syncReservations)
	defer func() {
		d.reservations.add(w.ID(), -1)
		// When ctx has ended, tick applies the release.
		_ = d.post(ctx, d.syncReservations)
	}()
	return w.Evaluate(ctx, req, progress)
}

// slotReservations counts the evaluations that run on each worker. The
// evaluation goroutines change it, and the Run goroutine hands the counts
// to the scheduler, so it has a lock of its own.
type slotReservations struct {
	mu   sync.Mutex
	want map[string]int
}

func (r *slotReservations) add(id string, delta int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.want == nil {
		r.want = map[string]int{}
	}
	r.want[id] += delta
	if r.want[id] <= 0 {
		delete(r.want, id)
	}
}

func (r *slotReservations) get(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.want[id]
}

// syncReservations passes to the scheduler how many slots of each building
// worker its evaluations take. Called on the Run goroutine.
func (d *driver) syncReservations(ctx context.Context) {
	for id := range d.links {
		want := d.reservations.get(id)
		delta := want - d.reserved[id]
		if delta == 0 {
			continue
		}
		decisions, err := d.sched.ReserveSlots(id, delta, d.now())
		if err != nil {
			d.log.Error("scheduler could not reserve worker slots", "worker_id", id, "err", err)
			continue
		}
		d.reserved[id] = want
		d.apply(ctx, decisions)
	}
}
