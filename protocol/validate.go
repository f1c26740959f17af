package protocol

import (
	"errors"
	"fmt"
)

// checkString checks one string field against max bytes.
func checkString(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s is %d bytes, more than %d", field, len(s), max)
	}
	return nil
}

// checkStrings checks a list of strings: each non-empty, at most
// MaxPathLength bytes, and at most maxItems of them.
func checkStrings(field string, list []string, maxItems int) error {
	if len(list) > maxItems {
		return fmt.Errorf("%s has %d entries, more than %d", field, len(list), maxItems)
	}
	for i, s := range list {
		if s == "" {
			return fmt.Errorf("%s[%d] is empty", field, i)
		}
		if err := checkString(fmt.Sprintf("%s[%d]", field, i), s, MaxPathLength); err != nil {
			return err
		}
	}
	return nil
}

func checkJob(job uint64) error {
	if job == 0 {
		return errors.New("job is 0")
	}
	return nil
}

func (m *Hello) validate() error {
	if len(m.Capabilities) > 16 {
		return fmt.Errorf("capabilities has %d entries, more than 16", len(m.Capabilities))
	}
	for _, c := range m.Capabilities {
		if err := checkString("capabilities", string(c), 64); err != nil {
			return err
		}
	}
	if err := checkStrings("systems", m.Systems, 64); err != nil {
		return err
	}
	if err := checkStrings("features", m.Features, 256); err != nil {
		return err
	}
	if m.MaxJobs < 1 || m.MaxJobs > 1024 {
		return fmt.Errorf("max_jobs is %d: give 1 to 1024", m.MaxJobs)
	}
	if m.CPUs < 0 {
		return fmt.Errorf("cpus is %d, below 0", m.CPUs)
	}
	if err := checkStrings("detached_builds", m.DetachedBuilds, MaxDetachedBuilds); err != nil {
		return err
	}
	return checkString("instance", m.Instance, 64)
}

func (m *Welcome) validate() error {
	if m.WorkerID == "" {
		return errors.New("worker_id is empty")
	}
	if m.HeartbeatMillis <= 0 || m.LeaseMillis <= 0 {
		return fmt.Errorf("heartbeat_ms %d and lease_ms %d must be positive", m.HeartbeatMillis, m.LeaseMillis)
	}
	for field, s := range map[string]string{"worker_id": m.WorkerID, "cache_path": m.CachePath, "cache_public_key": m.CachePublicKey} {
		if err := checkString(field, s, MaxPathLength); err != nil {
			return err
		}
	}
	return nil
}

func (m *Reject) validate() error { return checkString("reason", m.Reason, MaxTextLength) }

func (m *Heartbeat) validate() error {
	if m.RunningJobs < 0 {
		return fmt.Errorf("running_jobs is %d, below 0", m.RunningJobs)
	}
	return nil
}

func (m *JobOffer) validate() error {
	if err := checkJob(m.Job); err != nil {
		return err
	}
	switch {
	case (m.Eval == nil) == (m.Build == nil):
		return errors.New("exactly one of eval and build must be set")
	case m.Eval != nil:
		if err := checkString("eval.flake_ref", m.Eval.FlakeRef, MaxPathLength); err != nil {
			return err
		}
		return checkStrings("eval.entry_points", m.Eval.EntryPoints, MaxQueryPaths)
	default:
		if m.Build.DrvPath == "" {
			return errors.New("build.drv_path is empty")
		}
		return checkString("build.drv_path", m.Build.DrvPath, MaxPathLength)
	}
}

func (m *JobAccept) validate() error { return checkJob(m.Job) }

func (m *JobBuilt) validate() error { return checkJob(m.Job) }

func (m *JobDecline) validate() error {
	if err := checkJob(m.Job); err != nil {
		return err
	}
	return checkString("reason", m.Reason, MaxTextLength)
}

func (m *JobAbort) validate() error { return checkJob(m.Job) }

func (m *LogChunk) validate() error {
	if err := checkJob(m.Job); err != nil {
		return err
	}
	if len(m.Data) > MaxChunkSize {
		return fmt.Errorf("data is %d bytes, more than %d", len(m.Data), MaxChunkSize)
	}
	return nil
}

func (m *JobResult) validate() error {
	if err := checkJob(m.Job); err != nil {
		return err
	}
	set := 0
	for _, isSet := range []bool{m.Eval != nil, m.Build != nil, m.Error != nil} {
		if isSet {
			set++
		}
	}
	if set != 1 {
		return errors.New("exactly one of eval, build and error must be set")
	}
	switch {
	case m.Error != nil:
		return checkString("error.message", m.Error.Message, MaxTextLength)
	case m.Build != nil:
		for name, info := range m.Build.Outputs {
			if err := checkString("build.outputs", name, MaxPathLength); err != nil {
				return err
			}
			if err := info.validate("build.outputs." + truncate(name)); err != nil {
				return err
			}
		}
	case m.Eval != nil:
		return m.Eval.validate()
	}
	return nil
}

func (r *EvalResult) validate() error {
	for i, ep := range r.EntryPoints {
		if ep.Attr == "" {
			return fmt.Errorf("eval.entry_points[%d].attr is empty", i)
		}
		if err := checkString("eval.entry_points.error", ep.Error, MaxTextLength); err != nil {
			return err
		}
	}
	for i, d := range r.Derivations {
		if d.DrvPath == "" {
			return fmt.Errorf("eval.derivations[%d].drv_path is empty", i)
		}
		if err := checkStrings("eval.derivations.input_drvs", d.InputDrvs, MaxQueryPaths); err != nil {
			return err
		}
	}
	return nil
}

func (p *PathInfo) validate(field string) error {
	if p.StorePath == "" {
		return fmt.Errorf("%s.store_path is empty", field)
	}
	if p.NarHash == "" {
		return fmt.Errorf("%s.nar_hash is empty", field)
	}
	if err := checkStrings(field+".references", p.References, MaxQueryPaths); err != nil {
		return err
	}
	for name, s := range map[string]string{"store_path": p.StorePath, "nar_hash": p.NarHash, "deriver": p.Deriver, "ca": p.CA} {
		if err := checkString(field+"."+name, s, MaxPathLength); err != nil {
			return err
		}
	}
	return nil
}

func (m *PathQuery) validate() error {
	if m.ID == 0 {
		return errors.New("id is 0")
	}
	return checkStrings("paths", m.Paths, MaxQueryPaths)
}

func (m *PathAnswer) validate() error {
	if m.ID == 0 {
		return errors.New("id is 0")
	}
	if err := checkString("error", m.Error, MaxTextLength); err != nil {
		return err
	}
	return checkStrings("have", m.Have, MaxQueryPaths)
}

func (m *NARBegin) validate() error {
	if m.Upload == 0 {
		return errors.New("upload is 0")
	}
	if err := m.Info.validate("info"); err != nil {
		return err
	}
	if m.Compression != "zstd" {
		return fmt.Errorf("compression %q is not supported: use zstd", truncate(m.Compression))
	}
	if m.FileSize == 0 || m.FileSize > MaxUploadSize {
		return fmt.Errorf("file_size %d is out of range: give 1 to %d", m.FileSize, uint64(MaxUploadSize))
	}
	if len(m.FileHash) != 64 {
		return fmt.Errorf("file_hash %q is not a hex SHA-256", truncate(m.FileHash))
	}
	for _, c := range m.FileHash {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return fmt.Errorf("file_hash %q is not a hex SHA-256", truncate(m.FileHash))
		}
	}
	return nil
}

func (m *NAROffset) validate() error {
	if m.Upload == 0 {
		return errors.New("upload is 0")
	}
	return nil
}

func (m *NARChunk) validate() error {
	if m.Upload == 0 {
		return errors.New("upload is 0")
	}
	if len(m.Data) == 0 || len(m.Data) > MaxChunkSize {
		return fmt.Errorf("data is %d bytes: give 1 to %d", len(m.Data), MaxChunkSize)
	}
	return nil
}

func (m *NARStored) validate() error {
	if m.Upload == 0 {
		return errors.New("upload is 0")
	}
	return checkString("error", m.Error, MaxTextLength)
}
