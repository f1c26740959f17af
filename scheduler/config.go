package scheduler

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Policy selects how the Scheduler ranks ready derivations and places jobs.
type Policy string

const (
	// PolicyGradient ranks by the estimated critical path to the roots,
	// builds chains as one job and places a job where the fewest bytes
	// must be fetched. It is the default.
	PolicyGradient Policy = "gradient"

	// PolicyHydra ranks by the number of direct reverse dependencies and
	// places each derivation, one per job, on the fastest machine with the
	// fewest running jobs per unit of speed, like Hydra's queue runner.
	PolicyHydra Policy = "hydra"

	// PolicyFIFO builds derivations in the order they became ready, one per
	// job, on the machine with the lowest fraction of busy slots.
	PolicyFIFO Policy = "fifo"
)

// Policies lists every valid Policy, the default first.
var Policies = []Policy{PolicyGradient, PolicyHydra, PolicyFIFO}

// ErrInvalidConfig is wrapped by the errors of Config.Validate.
var ErrInvalidConfig = errors.New("invalid scheduler config")

// Config sets the Scheduler's policy and its estimates. The zero value is
// valid: New fills every zero field with its default.
type Config struct {
	// Policy ranks and places jobs. Default PolicyGradient.
	Policy Policy

	// DefaultBuildTime is the estimated build time of a derivation whose
	// pname and system have no history, on a worker of speed 1.
	// Default 60s, at least 1ms.
	DefaultBuildTime time.Duration

	// FetchBandwidth converts bytes a worker must fetch into seconds in a
	// placement Score, in bytes per second. Default 100e6 (100 MB/s),
	// greater than 0.
	FetchBandwidth float64

	// PeerSlack is how long past a peer's estimated time of arrival a
	// postponed derivation waits before it is built locally. Default 5m,
	// not negative.
	PeerSlack time.Duration

	// MaxAttempts is how many jobs may end without building a derivation
	// (a worker that gives up, as opposed to a build that fails) before
	// the derivation is failed. A worker that leaves costs no attempt.
	// Default 3, at least 1.
	MaxAttempts int

	// MaxJobLength is the maximum number of derivations in one chain job.
	// Default 100, at least 1. Only PolicyGradient builds chains.
	MaxJobLength int

	// ProjectShares maps a project to its share of the slots, relative to
	// the other projects. A project not listed has share 1. Each share must
	// be greater than 0 and finite.
	ProjectShares map[string]float64

	// HistoryWeight is the weight of the newest observed build time in the
	// moving average kept per pname and system. Default 0.3, in (0, 1].
	HistoryWeight float64

	// LocalityWindow is the number of ready derivations PolicyGradient
	// compares by the bytes a free worker must fetch, when none of them is
	// urgent. Default 64, at least 1; 1 turns the comparison off.
	LocalityWindow int

	// UrgencyMargin sets which derivations PolicyGradient assigns in
	// priority order, wherever their inputs are: those whose priority is
	// at least 1 - UrgencyMargin times the estimated time left. With a
	// margin m, a derivation whose estimate is up to 1/(1-m) times too low
	// becomes urgent before its true path exceeds the time left, so the
	// default covers estimates 1.67 times too low. Default 0.4, in (0, 1].
	UrgencyMargin float64

	// HoldThreshold is the fetch time PolicyGradient must save before a
	// derivation that is not urgent waits for a busy worker. It waits only
	// while the free slots could take every ready derivation, and only for
	// a busy worker that lacks fewer bytes of its inputs than any free
	// worker, by more than HoldThreshold at FetchBandwidth. Default 10s,
	// not negative.
	HoldThreshold time.Duration

	// JobIDPrefix starts every job ID, which continues with a counter from
	// 1. A node that restarts should pick a new prefix so job IDs stay
	// unique in its database. Default "job-".
	JobIDPrefix string
}

// Defaults of the Config fields.
const (
	DefaultBuildTime      = 60 * time.Second
	DefaultFetchBandwidth = 100e6
	DefaultPeerSlack      = 5 * time.Minute
	DefaultMaxAttempts    = 3
	DefaultMaxJobLength   = 100
	DefaultHistoryWeight  = 0.3
	DefaultJobIDPrefix    = "job-"
	DefaultLocalityWindow = 64
	DefaultHoldThreshold  = 10 * time.Second
	DefaultUrgencyMargin  = 0.4
)

// withDefaults returns a copy of c with every zero field set to its
// default. The ProjectShares map is copied too, so the caller may change
// its own map afterwards.
func (c Config) withDefaults() Config {
	if c.Policy == "" {
		c.Policy = PolicyGradient
	}
	if c.DefaultBuildTime == 0 {
		c.DefaultBuildTime = DefaultBuildTime
	}
	if c.FetchBandwidth == 0 {
		c.FetchBandwidth = DefaultFetchBandwidth
	}
	if c.PeerSlack == 0 {
		c.PeerSlack = DefaultPeerSlack
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.MaxJobLength == 0 {
		c.MaxJobLength = DefaultMaxJobLength
	}
	if c.HistoryWeight == 0 {
		c.HistoryWeight = DefaultHistoryWeight
	}
	if c.LocalityWindow == 0 {
		c.LocalityWindow = DefaultLocalityWindow
	}
	if c.UrgencyMargin == 0 {
		c.UrgencyMargin = DefaultUrgencyMargin
	}
	if c.HoldThreshold == 0 {
		c.HoldThreshold = DefaultHoldThreshold
	}
	if c.JobIDPrefix == "" {
		c.JobIDPrefix = DefaultJobIDPrefix
	}

	shares := make(map[string]float64, len(c.ProjectShares))
	for project, share := range c.ProjectShares {
		shares[project] = share
	}
	c.ProjectShares = shares
	return c
}

// Validate reports the first field of c, after defaults are filled, that
// is out of range. The error wraps ErrInvalidConfig and names the field.
func (c Config) Validate() error {
	c = c.withDefaults()

	switch {
	case c.Policy != PolicyGradient && c.Policy != PolicyHydra && c.Policy != PolicyFIFO:
		return fmt.Errorf("%w: Policy %q is not one of gradient, hydra, fifo", ErrInvalidConfig, c.Policy)
	case c.DefaultBuildTime < time.Millisecond:
		return fmt.Errorf("%w: DefaultBuildTime %v is below 1ms", ErrInvalidConfig, c.DefaultBuildTime)
	case !(c.FetchBandwidth > 0) || math.IsInf(c.FetchBandwidth, 0):
		return fmt.Errorf("%w: FetchBandwidth %v is not a positive finite number", ErrInvalidConfig, c.FetchBandwidth)
	case c.PeerSlack < 0:
		return fmt.Errorf("%w: PeerSlack %v is negative", ErrInvalidConfig, c.PeerSlack)
	case c.MaxAttempts < 1:
		return fmt.Errorf("%w: MaxAttempts %d is below 1", ErrInvalidConfig, c.MaxAttempts)
	case c.MaxJobLength < 1:
		return fmt.Errorf("%w: MaxJobLength %d is below 1", ErrInvalidConfig, c.MaxJobLength)
	case c.HoldThreshold < 0:
		return fmt.Errorf("%w: HoldThreshold %v is negative", ErrInvalidConfig, c.HoldThreshold)
	case c.LocalityWindow < 1:
		return fmt.Errorf("%w: LocalityWindow %d is below 1", ErrInvalidConfig, c.LocalityWindow)
	case !(c.UrgencyMargin > 0 && c.UrgencyMargin <= 1):
		return fmt.Errorf("%w: UrgencyMargin %v is not in (0, 1]", ErrInvalidConfig, c.UrgencyMargin)
	case !(c.HistoryWeight > 0 && c.HistoryWeight <= 1):
		return fmt.Errorf("%w: HistoryWeight %v is not in (0, 1]", ErrInvalidConfig, c.HistoryWeight)
	}

	for project, share := range c.ProjectShares {
		if !(share >= MinShare && share <= MaxShare) {
			return fmt.Errorf("%w: ProjectShares[%q] %v is not in [%v, %v]", ErrInvalidConfig, project, share, MinShare, MaxShare)
		}
	}
	return nil
}
