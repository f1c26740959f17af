package node

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/protocol"
)

// DefaultWorkerLease is how long a worker may stay silent, or stay away
// after its connection dropped, before its jobs are queued again.
const DefaultWorkerLease = 30 * time.Second

// MinWorkerLease and MaxWorkerLease bound Config.WorkerLease.
const (
	MinWorkerLease = 3 * time.Second
	MaxWorkerLease = time.Hour
)

// errWorkerRemoved is returned by workerLink.worker once the scheduler
// no longer counts the worker: it stopped, or stayed away past its lease.
var errWorkerRemoved = errors.New("worker removed")

// workerLink follows a building worker that the scheduler counts across
// its connections. While a dropped worker is away, its jobs wait for it
// to reconnect instead of being queued again, so that a build that goes
// on through a short outage is collected from the same worker.
type workerLink struct {
	id    string
	hello protocol.Hello

	// mu guards the fields below.
	mu sync.Mutex
	// current is the worker's connection, nil while it is away.
	current *protocol.RemoteWorker
	// away counts the outages, so that a lease timer can tell whether
	// the outage it ends is still the current one.
	away    int
	removed bool
	// changed is closed and replaced when current or removed changes.
	changed chan struct{}
}

func newWorkerLink(w *protocol.RemoteWorker) *workerLink {
	return &workerLink{id: w.ID(), hello: w.Hello(), current: w, changed: make(chan struct{})}
}

// set records the worker's connection, or nil when it dropped, and
// returns the number of the outage that nil starts.
func (l *workerLink) set(w *protocol.RemoteWorker) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.current = w
	if w == nil {
		l.away++
	}
	close(l.changed)
	l.changed = make(chan struct{})
	return l.away
}

// remove ends the link: jobs that wait for the worker get
// errWorkerRemoved.
func (l *workerLink) remove() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.removed = true
	l.current = nil
	close(l.changed)
	l.changed = make(chan struct{})
}

// awayFor reports whether the worker is away in outage n.
func (l *workerLink) awayFor(n int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.removed && l.current == nil && l.away == n
}

// isAway reports whether the worker's connection dropped and it has not
// come back yet.
func (l *workerLink) isAway() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return !l.removed && l.current == nil
}

// worker returns the worker's connection other than stale, waiting
// while the worker is away or still on stale, a connection that ended.
// It returns errWorkerRemoved once the link ended, and ctx's error when
// ctx ends first.
func (l *workerLink) worker(ctx context.Context, stale *protocol.RemoteWorker) (*protocol.RemoteWorker, error) {
	for {
		l.mu.Lock()
		w, removed, changed := l.current, l.removed, l.changed
		l.mu.Unlock()
		switch {
		case removed:
			return nil, errWorkerRemoved
		case w != nil && w != stale:
			return w, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// sameShape reports whether a reconnecting worker announced the systems,
// features and slots the scheduler has for it, so its jobs can stay.
func sameShape(a, b protocol.Hello) bool {
	return a.MaxJobs == b.MaxJobs && a.Has(protocol.CapBuild) == b.Has(protocol.CapBuild) &&
		slices.Equal(a.Systems, b.Systems) && slices.Equal(a.Features, b.Features)
}

// awayWorkers records until when each away worker keeps its jobs, for
// the worker list. The Run goroutine writes it and HTTP handlers read
// it, so it has a lock of its own.
type awayWorkers struct {
	mu      sync.Mutex
	workers map[string]awayWorker
}

// awayWorker is a worker whose jobs wait for it.
type awayWorker struct {
	// until is when its jobs go to other workers.
	until time.Time
	// hello is the Hello of its last connection.
	hello protocol.Hello
}

func (a *awayWorkers) set(id string, until time.Time, hello protocol.Hello) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.workers == nil {
		a.workers = map[string]awayWorker{}
	}
	a.workers[id] = awayWorker{until: until, hello: hello}
}

func (a *awayWorkers) clear(id string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.workers, id)
}

// get returns worker id and true when it is away.
func (a *awayWorkers) get(id string) (awayWorker, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.workers[id]
	return w, ok
}
