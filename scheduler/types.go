package scheduler

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Graph is the derivation graph of one evaluation.
//
// Every derivation in Derivations that is not Cached is built. The inputs of
// a derivation that is not Cached must be in Derivations too. A Cached
// derivation's inputs may be missing, because they are never needed.
type Graph struct {
	// EvalID identifies the evaluation, unique among the evaluations the
	// Scheduler holds.
	EvalID string
	// Project names the project the evaluation belongs to, for fairness.
	Project string
	// Derivations are the nodes of the graph, in any order, each once.
	Derivations []Derivation
}

// Derivation is one node of a Graph.
type Derivation struct {
	// DrvPath is the store path of the .drv file, the derivation's key.
	DrvPath string
	// Name is the derivation's name attribute, such as "hello-2.12". Build
	// time history is kept per name without its version. Empty means the
	// DrvPath is used as the name.
	Name string
	// System is the platform that builds it, such as "x86_64-linux".
	System string
	// Features are the requiredSystemFeatures, such as "kvm".
	Features []string
	// InputDrvs are the .drv store paths this derivation depends on.
	InputDrvs []string
	// Outputs are the output store paths, matched against the paths that
	// ReportStore lists. Empty for content-addressed outputs.
	Outputs []string
	// OutputSize is the NAR size of all outputs in bytes, known for outputs
	// already in a store or cache and estimated otherwise. A dependent
	// built on a worker whose store lacks the outputs must fetch this many
	// bytes.
	OutputSize uint64
	// Cached is true when every output is already in the cache, so the
	// derivation is never built.
	Cached bool
	// Parallel marks a build that uses every core it gets, such as one
	// with enableParallelBuilding. An urgent job with a parallel link
	// takes every slot of an idle worker, when there is one, so the
	// build has the worker's cores to itself.
	Parallel bool
	// PeerETA is when a peer node that announced it is building the
	// derivation expects to finish, or zero when no peer is. AddGraph then
	// postpones the derivation as PeerBuilding does, before it assigns
	// any job. Ignored when Cached is set.
	PeerETA time.Time
	// HeldFor names a worker that was building the derivation when the
	// node stopped, and HeldUntil when the node stops waiting for it.
	// Until then no other worker gets the derivation. Once HeldFor is
	// registered and not away, the derivation is assigned to it as a job
	// of its own, whether or not a slot is free, because that worker may
	// still be building it. ReleaseHolds ends the hold early. HeldFor is
	// ignored when Cached is set, when an input is not built, or when
	// HeldUntil is not after the time of AddGraph.
	HeldFor   string
	HeldUntil time.Time
}

// Bounds of Worker.Speed and of Config.ProjectShares. Outside them an
// estimate divided by a speed, or a count divided by a share, overflows
// to infinity or swamps every other term.
const (
	MinSpeed = 0.001
	MaxSpeed = 1000
	MinShare = 0.001
	MaxShare = 1000
)

// Worker describes a machine that builds jobs.
type Worker struct {
	// ID identifies the worker, unique among the registered workers.
	ID string
	// Systems are the platforms it builds for, such as "x86_64-linux".
	Systems []string
	// Features are the system features it supports, such as "kvm".
	Features []string
	// Slots is the number of jobs it runs at once, at least 1.
	Slots int
	// Speed is its build speed relative to a reference machine: a job
	// estimated at 60s takes 30s at speed 2. Zero means 1.
	Speed float64
}

// Limits on the inputs of AddGraph and AddWorker, which come from workers
// and clients and are therefore checked.
const (
	// MaxPathLength bounds DrvPath, output paths, input paths, EvalID,
	// Project and worker IDs, in bytes.
	MaxPathLength = 4096
	// MaxInputs bounds the InputDrvs of one derivation.
	MaxInputs = 100_000
)

// ErrInvalidGraph is wrapped by the errors AddGraph returns for a graph it
// rejects. Nothing of a rejected graph is added.
var ErrInvalidGraph = errors.New("invalid derivation graph")

// ErrInvalidWorker is wrapped by the errors AddWorker returns.
var ErrInvalidWorker = errors.New("invalid worker")

// ErrUnknownJob is returned by events that name a job the Scheduler does
// not hold, such as a late message from a worker that was removed.
var ErrUnknownJob = errors.New("unknown job")

// ErrUnknownDerivation is returned by events that name a derivation that is
// not part of the job they name.
var ErrUnknownDerivation = errors.New("unknown derivation")

// ErrUnknownWorker is returned by events that name a worker that is not
// registered.
var ErrUnknownWorker = errors.New("unknown worker")

// validateGraph checks the fields of g on their own. Checks that need the
// Scheduler's state, such as a repeated EvalID or a cycle, happen in
// AddGraph.
func validateGraph(g Graph) error {
	if err := validateID("EvalID", g.EvalID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidGraph, err)
	}
	if len(g.Project) > MaxPathLength {
		return fmt.Errorf("%w: Project is longer than %d bytes", ErrInvalidGraph, MaxPathLength)
	}

	seen := make(map[string]bool, len(g.Derivations))
	for i, d := range g.Derivations {
		if err := validateID("DrvPath", d.DrvPath); err != nil {
			return fmt.Errorf("%w: Derivations[%d]: %w", ErrInvalidGraph, i, err)
		}
		if seen[d.DrvPath] {
			return fmt.Errorf("%w: DrvPath %q appears twice", ErrInvalidGraph, d.DrvPath)
		}
		seen[d.DrvPath] = true

		if d.Cached {
			continue
		}
		if d.System == "" {
			return fmt.Errorf("%w: System of %q is empty", ErrInvalidGraph, d.DrvPath)
		}
		if len(d.InputDrvs) > MaxInputs {
			return fmt.Errorf("%w: %q has %d InputDrvs, more than %d", ErrInvalidGraph, d.DrvPath, len(d.InputDrvs), MaxInputs)
		}
		if len(d.HeldFor) > MaxPathLength {
			return fmt.Errorf("%w: HeldFor of %q is longer than %d bytes", ErrInvalidGraph, d.DrvPath, MaxPathLength)
		}
		for _, field := range [][]string{d.Features, d.Outputs} {
			for _, s := range field {
				if len(s) > MaxPathLength {
					return fmt.Errorf("%w: a feature or output of %q is longer than %d bytes", ErrInvalidGraph, d.DrvPath, MaxPathLength)
				}
			}
		}
	}

	for _, d := range g.Derivations {
		if d.Cached {
			continue
		}
		for _, in := range d.InputDrvs {
			if in == d.DrvPath {
				return fmt.Errorf("%w: %q depends on itself", ErrInvalidGraph, d.DrvPath)
			}
			if !seen[in] {
				return fmt.Errorf("%w: input %q of %q is missing from Derivations", ErrInvalidGraph, in, d.DrvPath)
			}
		}
	}
	return nil
}

func validateWorker(w Worker) error {
	if err := validateID("ID", w.ID); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidWorker, err)
	}
	if len(w.Systems) == 0 {
		return fmt.Errorf("%w: %q has no Systems", ErrInvalidWorker, w.ID)
	}
	if w.Slots < 1 {
		return fmt.Errorf("%w: Slots of %q is %d, below 1", ErrInvalidWorker, w.ID, w.Slots)
	}
	if w.Speed != 0 && !(w.Speed >= MinSpeed && w.Speed <= MaxSpeed) {
		return fmt.Errorf("%w: Speed of %q is %v, not 0 or in [%v, %v]", ErrInvalidWorker, w.ID, w.Speed, MinSpeed, MaxSpeed)
	}
	if slices.ContainsFunc(append(slices.Clone(w.Systems), w.Features...), func(s string) bool { return s == "" || len(s) > MaxPathLength }) {
		return fmt.Errorf("%w: a system or feature of %q is empty or longer than %d bytes", ErrInvalidWorker, w.ID, MaxPathLength)
	}
	return nil
}

func validateID(field, value string) error {
	if value == "" {
		return fmt.Errorf("%s is empty", field)
	}
	if len(value) > MaxPathLength {
		return fmt.Errorf("%s is longer than %d bytes", field, MaxPathLength)
	}
	return nil
}
