// Package sim replays a derivation graph on simulated workers under a
// scheduling policy and measures the outcome: the makespan against a
// lower bound, the bytes workers fetch, duplicate builds and the time the
// scheduler takes per decision.
//
// The simulation is a discrete-event loop in simulated time that drives
// the real scheduler.Scheduler, so it measures the code the node runs.
// A simulated worker has Cores cores and runs up to Cores jobs at once. A
// job first fetches the outputs of its inputs that its worker's store
// lacks, at Bandwidth, then builds its derivations one after the other.
// The builds running on a worker share its cores as the kernel shares
// them between nix builds that each see every core. That is what nix
// does by default, because its `cores` setting is the machine's core
// count. A serial build uses one core and a parallel one (Node.Cores) as
// many as it can get, but no build gets more than an equal share while
// others want more. A build is done when it has had its BuildTime in core-seconds at
// the worker's speed. Fetched and built outputs stay in the store for
// good: workers never collect garbage.
package sim

import (
	"cmp"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"time"

	"github.com/gradient-ci/gradient/scheduler"
)

// Defaults of the Options fields.
const (
	DefaultCores     = 4
	DefaultBandwidth = 100e6
	// HistoryNoise is the shape sigma of the log-normal error of the
	// build time estimates the simulator gives the scheduler. An estimate
	// is the true time times exp(HistoryNoise * N(0, 1)), so about two
	// thirds of them are within a factor of 1.35.
	HistoryNoise = 0.3
)

// ErrStalled is returned when the simulation ends with derivations that
// were never built, such as derivations no worker can build.
var ErrStalled = errors.New("simulation stalled")

// Options configures one simulation run. The zero value of a field means
// its default.
type Options struct {
	// Graph is one of Kinds, or the path of a graph file that LoadGraph
	// reads.
	Graph string
	// Size is the number of derivations of a generated graph. Default
	// DefaultSize(Graph).
	Size int
	// Workers is the number of simulated workers, at least 1.
	Workers int
	// Cores is the number of cores of a worker, which is also the number
	// of jobs it runs at once. Default 4.
	Cores int
	// SerialBuilds makes every build use one core, as if no derivation
	// had enableParallelBuilding. Without it, a derivation uses up to
	// Node.Cores cores.
	SerialBuilds bool
	// Speeds are the worker speeds, given to the workers in turn. Default
	// 1 for every worker.
	Speeds []float64
	// Bandwidth is the rate at which a worker fetches inputs, in bytes per
	// second. Default 100e6.
	Bandwidth float64
	// Policy is the scheduling policy. Default scheduler.PolicyGradient.
	Policy scheduler.Policy
	// Seed seeds the graph generator and the estimate noise.
	Seed uint64
	// NoHistory starts the scheduler without build time history, so every
	// estimate is scheduler.DefaultBuildTime. By default the scheduler
	// starts with the true build times, each off by HistoryNoise, as if
	// the graph had been built before.
	NoHistory bool
	// ExactHistory gives the scheduler the true build times as history.
	ExactHistory bool
	// Scheduler is the base configuration of the scheduler. Its Policy
	// and FetchBandwidth are overwritten with Policy and Bandwidth.
	Scheduler scheduler.Config
}

// Result is the outcome of a simulation, as `gradient sim --json` prints
// it.
type Result struct {
	Graph       string `json:"graph"`
	Derivations int    `json:"derivations"`
	Workers     int    `json:"workers"`
	Slots       int    `json:"slots"`
	Policy      string `json:"policy"`
	Seed        uint64 `json:"seed"`
	// SerialBuilds is set when every build used one core.
	SerialBuilds bool `json:"serial_builds"`

	// MakespanS is the simulated time from the graph's arrival to the end
	// of its last build, in seconds.
	MakespanS float64 `json:"makespan_s"`
	// LowerBoundS is the larger of CriticalPathS and WorkPerSlotS: no
	// schedule can finish sooner, fetching included or not.
	LowerBoundS float64 `json:"lower_bound_s"`
	// CriticalPathS is the longest path through the graph of shortest
	// build times: each build on as many of a worker's cores as it uses,
	// at the fastest worker's speed.
	CriticalPathS float64 `json:"critical_path_s"`
	// ReleaseBoundS is a lower bound at least as high as LowerBoundS. It
	// is the largest, over times T, of T plus the work of the derivations
	// whose inputs cannot all be built before T, divided by the sum over
	// workers of cores times speed. It exposes graphs where LowerBoundS
	// cannot be reached, such as one with a long bootstrap chain.
	ReleaseBoundS float64 `json:"release_bound_s"`
	// WorkPerSlotS is the total work, in core-seconds, divided by the
	// sum over workers of cores times speed.
	WorkPerSlotS float64 `json:"work_per_slot_s"`
	// BytesMoved is the sum of the bytes workers fetched: the output sizes
	// of the inputs each job needed and its worker's store lacked.
	BytesMoved uint64 `json:"bytes_moved"`
	// DuplicateBuilds counts builds of a derivation after its first.
	DuplicateBuilds int `json:"duplicate_builds"`
	// MaxDecisionUS is the longest CPU time per decision of a scheduler
	// call after the graph was added, in microseconds: the call's time
	// divided by the number of decisions it returned. Thread CPU time is
	// used where the platform offers it (Linux), which leaves out the time
	// other processes hold the CPU, and wall time elsewhere.
	MaxDecisionUS float64 `json:"max_decision_us"`
	// MaxCallUS is the longest CPU time of one scheduler call after the
	// graph was added, in microseconds. One event can cause many
	// decisions, such as the end of a bootstrap chain that makes thousands
	// of derivations ready and fills every free slot.
	MaxCallUS float64 `json:"max_call_us"`
	// PlanS is the wall time of the AddGraph call, which ranks the whole
	// graph and makes the first assignments, in seconds.
	PlanS float64 `json:"plan_s"`
	// PlanCPUS is the CPU time of the same call, as for MaxDecisionUS.
	PlanCPUS float64 `json:"plan_cpu_s"`
	// SchedulerS is the wall time of all scheduler calls, in seconds.
	SchedulerS float64 `json:"scheduler_s"`
	// Jobs counts the jobs the scheduler assigned.
	Jobs int `json:"jobs"`
	// Decisions counts the decisions the scheduler returned.
	Decisions int `json:"decisions"`
}

// Run simulates one graph under one policy. It returns ctx's error when
// ctx is cancelled before the simulation ends.
func Run(ctx context.Context, opts Options) (Result, error) {
	g, err := loadOrGenerate(opts)
	if err != nil {
		return Result{}, err
	}
	return RunGraph(ctx, g, opts)
}

func loadOrGenerate(opts Options) (*Graph, error) {
	if slices.Contains(Kinds, opts.Graph) {
		return Generate(opts.Graph, opts.Size, opts.Seed)
	}
	if opts.Graph == "" {
		return nil, fmt.Errorf("simulate: graph is empty, want one of %v or a file", Kinds)
	}
	if _, err := os.Stat(opts.Graph); err != nil {
		return nil, fmt.Errorf("simulate: graph %q is neither one of %v nor a readable file: %w", opts.Graph, Kinds, err)
	}
	return ReadGraphFile(opts.Graph)
}

// RunGraph simulates g under opts, whose Graph and Size are only copied
// into the Result.
func RunGraph(ctx context.Context, g *Graph, opts Options) (Result, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return Result{}, err
	}

	sm, err := newSimulation(g, opts)
	if err != nil {
		return Result{}, err
	}
	if err := sm.run(ctx); err != nil {
		return Result{}, err
	}
	return sm.result, nil
}

func (o Options) withDefaults() (Options, error) {
	if o.Workers < 1 {
		return o, fmt.Errorf("simulate: workers is %d, want at least 1", o.Workers)
	}
	if o.Cores == 0 {
		o.Cores = DefaultCores
	}
	if o.Cores < 1 {
		return o, fmt.Errorf("simulate: cores is %d, want at least 1", o.Cores)
	}
	if o.Bandwidth == 0 {
		o.Bandwidth = DefaultBandwidth
	}
	if !(o.Bandwidth > 0) || math.IsInf(o.Bandwidth, 0) {
		return o, fmt.Errorf("simulate: bandwidth %v is not a positive finite number", o.Bandwidth)
	}
	if len(o.Speeds) == 0 {
		o.Speeds = []float64{1}
	}
	for _, s := range o.Speeds {
		if !(s >= scheduler.MinSpeed && s <= scheduler.MaxSpeed) {
			return o, fmt.Errorf("simulate: speed %v is not in [%v, %v]", s, scheduler.MinSpeed, scheduler.MaxSpeed)
		}
	}
	if o.Policy == "" {
		o.Policy = scheduler.PolicyGradient
	}
	return o, nil
}

// epoch is simulated time zero.
var epoch = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)

type simWorker struct {
	id    string
	speed float64
	// store[i] is set when the worker holds the outputs of derivation i.
	store []bool
	// building lists the builds that run on the worker's cores.
	building []*simBuild
	// updated is the time up to which the work left of building is
	// counted.
	updated float64
	// version changes whenever building or its rates change, which makes
	// finish events pushed before stale.
	version uint64
}

// simBuild is one derivation building on a worker.
type simBuild struct {
	jobID string
	drv   int
	// left is the work left in core-seconds at speed 1.
	left float64
	// cores is the most cores the build uses, and rate the cores it gets.
	cores float64
	rate  float64
}

type simJob struct {
	worker *simWorker
	links  []int
	// next is the index in links of the next derivation to build.
	next int
}

type eventKind int

const (
	// fetched: a job has its inputs and starts its first build.
	fetched eventKind = iota
	// buildFinished: a build may have finished, unless its worker's
	// version has changed since the event was pushed.
	buildFinished
)

type event struct {
	at      float64
	seq     uint64
	kind    eventKind
	jobID   string
	worker  *simWorker
	version uint64
}

type eventQueue []event

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(event)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

type simulation struct {
	graph     *Graph
	opts      Options
	sched     *scheduler.Scheduler
	workers   map[string]*simWorker
	jobs      map[string]*simJob
	index     map[string]int
	builds    []int
	events    eventQueue
	seq       uint64
	now       float64
	done      bool
	result    Result
	callTotal time.Duration
}

func newSimulation(g *Graph, opts Options) (*simulation, error) {
	cfg := opts.Scheduler
	cfg.Policy = opts.Policy
	cfg.FetchBandwidth = opts.Bandwidth
	sched, err := scheduler.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("simulate: %w", err)
	}

	sm := &simulation{
		graph:   g,
		opts:    opts,
		sched:   sched,
		workers: make(map[string]*simWorker),
		jobs:    make(map[string]*simJob),
		index:   make(map[string]int, len(g.Derivations)),
		builds:  make([]int, len(g.Derivations)),
	}
	for i, n := range g.Derivations {
		sm.index[n.DrvPath] = i
	}

	sm.result = Result{
		Graph:        opts.Graph,
		Derivations:  len(g.Derivations),
		Workers:      opts.Workers,
		Slots:        opts.Workers * opts.Cores,
		Policy:       string(opts.Policy),
		Seed:         opts.Seed,
		SerialBuilds: opts.SerialBuilds,
	}
	sm.lowerBound()
	if !opts.NoHistory {
		sm.sched.LoadHistory(sm.history())
	}
	return sm, nil
}

// lowerBound fills the lower bound fields of the result.
func (sm *simulation) lowerBound() {
	b := computeBounds(sm.graph, sm.opts)
	sm.result.CriticalPathS = b.criticalPath
	sm.result.WorkPerSlotS = b.workPerSlot
	sm.result.LowerBoundS = b.lower
	sm.result.ReleaseBoundS = b.release
}

// history returns the estimates the scheduler starts with: one per pname,
// the true build time of the first derivation with that pname, with noise
// unless ExactHistory is set.
func (sm *simulation) history() []scheduler.HistoryEntry {
	rng := rand.New(rand.NewPCG(sm.opts.Seed, 0x5eed))
	seen := make(map[string]bool)
	var entries []scheduler.HistoryEntry
	for _, n := range sm.graph.Derivations {
		pname := scheduler.PName(cmpOr(n.Name, n.DrvPath))
		key := pname + "\x00" + n.System
		if n.Cached || seen[key] {
			continue
		}
		seen[key] = true

		seconds := n.BuildTime
		if !sm.opts.ExactHistory {
			seconds *= math.Exp(HistoryNoise * rng.NormFloat64())
		}
		entries = append(entries, scheduler.HistoryEntry{
			PName:     pname,
			System:    n.System,
			BuildTime: time.Duration(seconds * float64(time.Second)),
			Samples:   1,
		})
	}
	return entries
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func (sm *simulation) at(seconds float64) time.Time {
	return epoch.Add(time.Duration(seconds * float64(time.Second)))
}

func (sm *simulation) push(e event) {
	sm.seq++
	e.seq = sm.seq
	heap.Push(&sm.events, e)
}

// call runs one scheduler call, timing it, and applies its decisions.
func (sm *simulation) call(first bool, f func() ([]scheduler.Decision, error)) error {
	start, startCPU := time.Now(), threadCPUTime()
	decisions, err := f()
	elapsed, elapsedCPU := time.Since(start), threadCPUTime()-startCPU

	sm.callTotal += elapsed
	if first {
		sm.result.PlanS = elapsed.Seconds()
		sm.result.PlanCPUS = elapsedCPU.Seconds()
	} else {
		sm.result.MaxCallUS = max(sm.result.MaxCallUS, float64(elapsedCPU.Nanoseconds())/1e3)
		if n := len(decisions); n > 0 {
			perDecision := float64(elapsedCPU.Nanoseconds()) / 1e3 / float64(n)
			sm.result.MaxDecisionUS = max(sm.result.MaxDecisionUS, perDecision)
		}
	}
	if err != nil {
		return fmt.Errorf("simulate: %w", err)
	}

	sm.result.Decisions += len(decisions)
	for _, d := range decisions {
		if err := sm.apply(d); err != nil {
			return err
		}
	}
	return nil
}

func (sm *simulation) run(ctx context.Context) error {
	// Thread CPU time measures the scheduler only while this goroutine
	// stays on one thread.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()

	systems, features := sm.graphPlatforms()
	for i := 0; i < sm.opts.Workers; i++ {
		w := &simWorker{
			id:    fmt.Sprintf("w%03d", i),
			speed: sm.opts.Speeds[i%len(sm.opts.Speeds)],
			store: make([]bool, len(sm.graph.Derivations)),
		}
		sm.workers[w.id] = w
		err := sm.call(false, func() ([]scheduler.Decision, error) {
			return sm.sched.AddWorker(scheduler.Worker{
				ID: w.id, Systems: systems, Features: features, Slots: sm.opts.Cores, Speed: w.speed,
			}, sm.at(0))
		})
		if err != nil {
			return err
		}
	}

	g := sm.schedulerGraph()
	if err := sm.call(true, func() ([]scheduler.Decision, error) { return sm.sched.AddGraph(g, sm.at(0)) }); err != nil {
		return err
	}

	for steps := 0; !sm.done && len(sm.events) > 0; steps++ {
		if steps%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
		}
		e := heap.Pop(&sm.events).(event)
		sm.now = e.at
		if err := sm.handle(e); err != nil {
			return err
		}
	}

	if !sm.done {
		return fmt.Errorf("%w at %.0fs: the evaluation never finished", ErrStalled, sm.now)
	}
	sm.result.MakespanS = sm.now
	sm.result.SchedulerS = sm.callTotal.Seconds()
	for _, n := range sm.builds {
		if n > 1 {
			sm.result.DuplicateBuilds += n - 1
		}
	}
	return nil
}

func (sm *simulation) handle(e event) error {
	switch e.kind {
	case fetched:
		if err := sm.sched.JobStarted(e.jobID, sm.at(e.at)); err != nil {
			return fmt.Errorf("simulate: %w", err)
		}
		j := sm.jobs[e.jobID]
		j.worker.advance(sm.now)
		sm.startBuild(e.jobID, j)
		sm.reschedule(j.worker)
		return nil
	default:
		if e.version != e.worker.version {
			return nil
		}
		return sm.finishBuild(e.worker)
	}
}

// startBuild puts the next derivation of job j on its worker's cores.
func (sm *simulation) startBuild(jobID string, j *simJob) {
	n := sm.graph.Derivations[j.links[j.next]]
	j.worker.building = append(j.worker.building, &simBuild{
		jobID: jobID,
		drv:   j.links[j.next],
		left:  n.BuildTime,
		cores: buildCores(n, sm.opts),
	})
}

// finishBuild ends the build of w that finishes first at the current
// rates, which the event that called it found finished, and starts the
// next derivation of its job or finishes the job.
func (sm *simulation) finishBuild(w *simWorker) error {
	w.advance(sm.now)
	first := 0
	for i, b := range w.building {
		if b.left/b.rate < w.building[first].left/w.building[first].rate {
			first = i
		}
	}
	b := w.building[first]
	w.building = slices.Delete(w.building, first, first+1)

	w.store[b.drv] = true
	sm.builds[b.drv]++
	now := sm.at(sm.now)
	err := sm.call(false, func() ([]scheduler.Decision, error) {
		return sm.sched.DerivationBuilt(b.jobID, sm.graph.Derivations[b.drv].DrvPath, now)
	})
	if err != nil {
		return err
	}

	j := sm.jobs[b.jobID]
	j.next++
	if j.next < len(j.links) {
		sm.startBuild(b.jobID, j)
	} else {
		delete(sm.jobs, b.jobID)
		err := sm.call(false, func() ([]scheduler.Decision, error) {
			return sm.sched.JobFinished(b.jobID, now)
		})
		if err != nil {
			return err
		}
	}
	sm.reschedule(w)
	return nil
}

// advance counts the work the builds of w did from w.updated to now.
func (w *simWorker) advance(now float64) {
	for _, b := range w.building {
		b.left = max(0, b.left-b.rate*w.speed*(now-w.updated))
	}
	w.updated = now
}

// reschedule shares the cores of w between its builds and pushes the
// event of the build that finishes first. A build gets as many cores as
// it uses, up to an equal share of the cores the builds using fewer
// leave: water-filling, as the kernel's fair scheduler divides CPU time
// between busy processes.
func (sm *simulation) reschedule(w *simWorker) {
	w.version++
	if len(w.building) == 0 {
		return
	}
	slices.SortStableFunc(w.building, func(a, b *simBuild) int { return cmp.Compare(a.cores, b.cores) })
	free := float64(sm.opts.Cores)
	for i, b := range w.building {
		share := free / float64(len(w.building)-i)
		b.rate = min(b.cores, share)
		free -= b.rate
	}

	next := math.Inf(1)
	for _, b := range w.building {
		next = min(next, b.left/(b.rate*w.speed))
	}
	sm.push(event{at: sm.now + next, kind: buildFinished, worker: w, version: w.version})
}

// apply carries out one decision: an Assign becomes the events of its
// job, and EvaluationDone ends the simulation.
func (sm *simulation) apply(d scheduler.Decision) error {
	switch d := d.(type) {
	case scheduler.Assign:
		return sm.startJob(d)
	case scheduler.EvaluationDone:
		sm.done = true
	case scheduler.DependencyFailed:
		return fmt.Errorf("simulate: %q failed although no simulated build fails", d.DrvPath)
	}
	return nil
}

func (sm *simulation) startJob(a scheduler.Assign) error {
	w, ok := sm.workers[a.WorkerID]
	if !ok {
		return fmt.Errorf("simulate: job %q assigned to unknown worker %q", a.JobID, a.WorkerID)
	}
	j := &simJob{worker: w}
	for _, path := range a.DrvPaths {
		j.links = append(j.links, sm.index[path])
	}
	sm.jobs[a.JobID] = j
	sm.result.Jobs++

	// Fetch every input from outside the job that the store lacks.
	var fetchedBytes uint64
	for _, link := range j.links {
		for _, in := range sm.graph.Derivations[link].Inputs {
			if w.store[in] || slices.Contains(j.links, in) {
				continue
			}
			w.store[in] = true
			fetchedBytes = addSaturating(fetchedBytes, sm.graph.Derivations[in].OutputSize)
		}
	}
	sm.result.BytesMoved = addSaturating(sm.result.BytesMoved, fetchedBytes)

	sm.push(event{at: sm.now + float64(fetchedBytes)/sm.opts.Bandwidth, kind: fetched, jobID: a.JobID})
	return nil
}

// graphPlatforms returns every system and feature of the graph, which all
// simulated workers support.
func (sm *simulation) graphPlatforms() (systems, features []string) {
	for _, n := range sm.graph.Derivations {
		if n.System != "" && !slices.Contains(systems, n.System) {
			systems = append(systems, n.System)
		}
		for _, f := range n.Features {
			if !slices.Contains(features, f) {
				features = append(features, f)
			}
		}
	}
	if len(systems) == 0 {
		systems = []string{"x86_64-linux"}
	}
	return systems, features
}

func (sm *simulation) schedulerGraph() scheduler.Graph {
	g := scheduler.Graph{EvalID: "sim", Project: "sim", Derivations: make([]scheduler.Derivation, len(sm.graph.Derivations))}
	for i, n := range sm.graph.Derivations {
		d := scheduler.Derivation{
			DrvPath:    n.DrvPath,
			Name:       n.Name,
			System:     n.System,
			Features:   n.Features,
			OutputSize: n.OutputSize,
			Cached:     n.Cached,
			Parallel:   buildCores(n, sm.opts) > 1,
		}
		for _, in := range n.Inputs {
			d.InputDrvs = append(d.InputDrvs, sm.graph.Derivations[in].DrvPath)
		}
		g.Derivations[i] = d
	}
	return g
}

// addSaturating returns a+b, or math.MaxUint64 when that overflows: a
// graph file may give any output size.
func addSaturating(a, b uint64) uint64 {
	if a > math.MaxUint64-b {
		return math.MaxUint64
	}
	return a + b
}
