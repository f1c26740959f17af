// Package scheduler decides which worker builds which derivation, and when.
//
// A Scheduler is a deterministic state machine. The node feeds it events:
// an evaluation's derivation graph, workers joining and leaving, jobs
// starting, derivations built or failed, store contents and the passing of
// time. Every event method returns the decisions the event caused, such
// as assigning a job to a worker, cancelling a job, or reporting a
// derivation that waits or can never be built, or an evaluation that is
// done. The Scheduler
// starts no goroutines, opens no sockets and never reads the clock: time
// comes in as an argument. The same events in the same order therefore
// always produce the same decisions, which the data-driven tests in
// testdata/ and the simulator in scheduler/sim rely on.
//
// # Policy
//
// Under PolicyGradient, the default, a ready derivation's priority is the
// longest path from it to the roots of its evaluations, each derivation on
// the path weighted by its estimated build time. Estimates come from the
// build times observed for the same name without its version (the pname)
// on the same system, and Config.DefaultBuildTime stands in for names never
// seen. Equal priorities go to the derivation with more transitive
// dependents, an estimate from a bottom-k sketch.
//
// A chain of derivations in which each link is the only dependent of the
// one before and has no other missing input becomes one job, so the
// chain's intermediate outputs are built where they are used.
//
// A derivation whose priority is close to the estimated time left is
// urgent: it goes first, to the worker with a free slot, the system and
// the features it needs and the lowest Score. The Score is the seconds
// needed to fetch the input outputs missing from the worker's store, plus
// the estimated build time divided by the worker's speed. Derivations that
// are not urgent are taken by the bytes a free worker lacks of their
// inputs, and while slots are idle anyway they wait for a busy worker that
// holds their inputs, see Config.HoldThreshold.
//
// # Fairness
//
// Each project has a share of the slots, 1 unless Config.ProjectShares
// sets another. When a slot is free, the ready job of the project with the
// fewest running jobs per share goes first, and priority decides only
// within a project. A project with a huge evaluation therefore takes the
// slots that other projects leave idle, but a small project's jobs never
// wait behind the whole of it. A derivation shared by evaluations of
// several projects counts for the project of its oldest evaluation.
//
// # Deduplication and postponement
//
// A derivation path that appears in several evaluations is one derivation
// to the Scheduler: it is built once, and every evaluation that contains it
// gets the result. PeerBuilding postpones a derivation that a peer node
// announces it is building until the peer's estimated time of arrival plus
// Config.PeerSlack. After that it is built locally, unless PeerBuilt came
// first. A Derivation's PeerETA does the same for a build the node knows
// of when it adds the graph, before any job is assigned. PeerGone ends a
// postponement at once, when the peer's build failed or lapsed.
package scheduler
