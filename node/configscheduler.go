package node

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

// The checks below are shared by the configuration file and the flags of
// `gradient serve`, so that both accept the same values. Each returns an
// error without the flag or key, which the caller puts in front.

// MinDefaultBuildTime is the lowest scheduler default build time that
// scheduler.Config accepts.
const MinDefaultBuildTime = time.Millisecond

// DefaultFetchBandwidth is scheduler.DefaultFetchBandwidth as the flag
// --scheduler-fetch-bandwidth shows it.
const DefaultFetchBandwidth = "100MB/s"

// ParseSchedulerPolicy returns the scheduler policy named s: gradient,
// hydra or fifo.
func ParseSchedulerPolicy(s string) (scheduler.Policy, error) {
	for _, p := range scheduler.Policies {
		if string(p) == s {
			return p, nil
		}
	}
	return "", fmt.Errorf("%q is not a policy: give gradient, hydra or fifo", s)
}

// ParseProjectShare parses the ORG/PROJECT=SHARE form of
// --scheduler-project-share.
func ParseProjectShare(s string) (project string, share float64, err error) {
	project, value, found := strings.Cut(s, "=")
	if !found {
		return "", 0, errors.New("it has no '=': give ORG/PROJECT=SHARE, such as acme/web=3")
	}
	if err := CheckShareProject(project); err != nil {
		return "", 0, err
	}
	share, err = strconv.ParseFloat(value, 64)
	if err != nil {
		return "", 0, fmt.Errorf("share %q of %s is not a number: give a positive number, such as 0.5 or 3", value, project)
	}
	if err := CheckShare(share); err != nil {
		return "", 0, fmt.Errorf("share of %s: %w", project, err)
	}
	return project, share, nil
}

// CheckShareProject returns an error unless project is an organisation
// and a project name joined by '/', the form in which the scheduler
// receives the project of an evaluation.
func CheckShareProject(project string) error {
	org, name, found := strings.Cut(project, "/")
	if !found {
		return fmt.Errorf("project %q has no '/': give ORG/PROJECT, such as acme/web", project)
	}
	if err := db.ValidateName("organisation name", org); err != nil {
		return fmt.Errorf("project %q: %w", project, err)
	}
	if err := db.ValidateName("project name", name); err != nil {
		return fmt.Errorf("project %q: %w", project, err)
	}
	return nil
}

// CheckShare returns an error unless share is in [scheduler.MinShare,
// scheduler.MaxShare].
func CheckShare(share float64) error {
	if !(share >= scheduler.MinShare && share <= scheduler.MaxShare) {
		return fmt.Errorf("%v is out of range: give a share from %v to %v, such as 0.5 or 3", share, scheduler.MinShare, scheduler.MaxShare)
	}
	return nil
}

// ParseFetchBandwidth parses a bandwidth in bytes per second, such as
// "100MB/s", "1GiB/s" or "125000000". The "/s" is optional. A unit that
// ends in a lower-case b, such as "Mb", is rejected because it reads as
// bits.
func ParseFetchBandwidth(s string) (float64, error) {
	text := strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	if strings.HasSuffix(text, "b") {
		return 0, fmt.Errorf("%q is in bits: give bytes per second with a capital B, such as 125MB/s for 1 Gbit/s", s)
	}
	bytes, err := humanize.ParseBytes(text)
	if err != nil || bytes == 0 {
		return 0, fmt.Errorf("%q is not a bandwidth: give bytes per second greater than 0, such as 100MB/s or 1GB/s", s)
	}
	return float64(bytes), nil
}

// CheckWorkerSpeed returns an error unless speed is a valid worker speed,
// see db.ValidateWorkerSpeed.
func CheckWorkerSpeed(speed float64) error {
	if !(speed >= scheduler.MinSpeed && speed <= scheduler.MaxSpeed) {
		return fmt.Errorf("%v is out of range: give a speed from %v to %v, such as 1, or 2 for a machine that builds twice as fast", speed, scheduler.MinSpeed, scheduler.MaxSpeed)
	}
	return nil
}

// validateScheduler returns an error naming every invalid scheduler
// setting of c.
func (c Config) validateScheduler() error {
	var errs []error
	if err := c.Scheduler.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, project := range slices.Sorted(maps.Keys(c.Scheduler.ProjectShares)) {
		if err := CheckShareProject(project); err != nil {
			errs = append(errs, fmt.Errorf("scheduler project shares: %w", err))
		}
	}
	if err := CheckWorkerSpeed(c.WorkerSpeed); err != nil {
		errs = append(errs, fmt.Errorf("worker speed %w", err))
	}
	return errors.Join(errs...)
}

// logSchedulerConfig logs the settings the scheduler starts with, and
// warns of each project share for a project that does not exist, which
// may be a typo: the share applies once a project of that name exists.
func logSchedulerConfig(log *slog.Logger, records *db.DB, cfg scheduler.Config) {
	log.Info("scheduler configured", "policy", cfg.Policy, "project_shares", len(cfg.ProjectShares),
		"fetch_bandwidth", cfg.FetchBandwidth, "max_attempts", cfg.MaxAttempts, "default_build_time", cfg.DefaultBuildTime)

	for _, project := range slices.Sorted(maps.Keys(cfg.ProjectShares)) {
		org, name, _ := strings.Cut(project, "/")
		_, err := records.GetProject(org, name)
		if errors.Is(err, db.ErrNotFound) {
			log.Warn("project share set for a project that does not exist; it applies once the project is created",
				"project", project, "share", cfg.ProjectShares[project])
		} else if err != nil {
			log.Error("look up the project of a project share failed", "project", project, "err", err)
		}
	}
}

// checkScheduler checks the [scheduler] section of a configuration file
// and converts its values.
func (c *ConfigFile) checkScheduler(raw rawScheduler, fail checkFunc) error {
	if raw.Policy != nil {
		policy, err := ParseSchedulerPolicy(*raw.Policy)
		if err != nil {
			return fail("scheduler.policy", "%v", err)
		}
		c.SchedulerPolicy = &policy
	}

	if raw.ProjectShares != nil {
		shares := make(map[string]float64, len(raw.ProjectShares))
		for _, project := range slices.Sorted(maps.Keys(raw.ProjectShares)) {
			key := fmt.Sprintf("scheduler.project_shares.%q", project)
			if err := CheckShareProject(project); err != nil {
				return fail(key, "%v", err)
			}
			share, err := tomlNumber(raw.ProjectShares[project])
			if err == nil {
				err = CheckShare(share)
			}
			if err != nil {
				return fail(key, "%v", err)
			}
			shares[project] = share
		}
		c.SchedulerProjectShares = shares
	}

	if raw.FetchBandwidth != nil {
		bandwidth, err := tomlBandwidth(raw.FetchBandwidth)
		if err != nil {
			return fail("scheduler.fetch_bandwidth", "%v", err)
		}
		c.SchedulerFetchBandwidth = &bandwidth
	}

	if raw.MaxAttempts != nil {
		if *raw.MaxAttempts < 1 {
			return fail("scheduler.max_attempts", "%d is out of range: give 1 or more", *raw.MaxAttempts)
		}
		c.SchedulerMaxAttempts = raw.MaxAttempts
	}

	if raw.DefaultBuildTime != nil {
		d, err := time.ParseDuration(*raw.DefaultBuildTime)
		if err != nil || d < MinDefaultBuildTime {
			return fail("scheduler.default_build_time", "%q is invalid: give a duration of %v or more, such as \"1m\"", *raw.DefaultBuildTime, MinDefaultBuildTime)
		}
		c.SchedulerDefaultBuildTime = &d
	}
	return nil
}

// tomlNumber converts a TOML integer or float to a float64.
func tomlNumber(v any) (float64, error) {
	switch v := v.(type) {
	case int64:
		return float64(v), nil
	case float64:
		return v, nil
	default:
		return 0, fmt.Errorf("has TOML type %T: give a number, such as 2 or 1.5", v)
	}
}

// tomlBandwidth converts a fetch_bandwidth value: an integer number of
// bytes per second or a string such as "100MB/s".
func tomlBandwidth(v any) (float64, error) {
	switch v := v.(type) {
	case int64:
		if v <= 0 {
			return 0, fmt.Errorf("%d is not positive: give bytes per second greater than 0, or a string such as \"100MB/s\"", v)
		}
		return float64(v), nil
	case string:
		return ParseFetchBandwidth(v)
	default:
		return 0, fmt.Errorf("has TOML type %T: give bytes per second as an integer or a string such as \"100MB/s\"", v)
	}
}
