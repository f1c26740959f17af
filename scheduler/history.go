package scheduler

import (
	"cmp"
	"math"
	"slices"
	"time"
)

// HistoryEntry is the moving average of the build times observed for one
// pname on one system, on a worker of speed 1.
type HistoryEntry struct {
	// PName is the derivation name without its version, see PName.
	PName  string
	System string
	// BuildTime is the moving average, weighted by Config.HistoryWeight.
	BuildTime time.Duration
	// Samples counts the builds observed.
	Samples int
}

type historyKey struct {
	pname, system string
}

type historyValue struct {
	seconds float64
	samples int
}

// PName returns a derivation name without its version, split the way
// Nix's DrvName does (src/libstore/names.cc): the version starts at the
// first dash that is followed by a character other than a letter. PName("hello-2.12") is "hello", and
// PName("gcc-wrapper-13.2.0") is "gcc-wrapper".
func PName(name string) string {
	for i := 0; i+1 < len(name); i++ {
		if name[i] != '-' {
			continue
		}
		next := name[i+1]
		if !('a' <= next && next <= 'z' || 'A' <= next && next <= 'Z') {
			return name[:i]
		}
	}
	return name
}

// estimateSeconds returns the estimated build time of a derivation on a
// worker of speed 1.
func (s *Scheduler) estimateSeconds(pname, system string) float64 {
	if h, ok := s.history[historyKey{pname, system}]; ok {
		return h.seconds
	}
	return s.cfg.DefaultBuildTime.Seconds()
}

// observe folds one measured build time, already scaled to speed 1, into
// the history.
func (s *Scheduler) observe(pname, system string, seconds float64) {
	if seconds < 0 || math.IsNaN(seconds) || math.IsInf(seconds, 0) {
		return
	}
	key := historyKey{pname, system}
	h, ok := s.history[key]
	if !ok {
		s.history[key] = &historyValue{seconds: seconds, samples: 1}
		return
	}
	w := s.cfg.HistoryWeight
	h.seconds = w*seconds + (1-w)*h.seconds
	h.samples++
}

// History returns the build time estimates the Scheduler holds, sorted by
// PName and System, so the node can store them and pass them to
// LoadHistory after a restart.
func (s *Scheduler) History() []HistoryEntry {
	entries := make([]HistoryEntry, 0, len(s.history))
	for key, h := range s.history {
		entries = append(entries, HistoryEntry{
			PName:     key.pname,
			System:    key.system,
			BuildTime: time.Duration(h.seconds * float64(time.Second)),
			Samples:   h.samples,
		})
	}
	slices.SortFunc(entries, func(a, b HistoryEntry) int {
		return cmp.Or(cmp.Compare(a.PName, b.PName), cmp.Compare(a.System, b.System))
	})
	return entries
}

// LoadHistory replaces the estimates of the listed pnames and systems.
// Entries with a negative BuildTime are skipped. Derivations already added
// keep the estimates they were added with.
func (s *Scheduler) LoadHistory(entries []HistoryEntry) {
	for _, e := range entries {
		if e.BuildTime < 0 {
			continue
		}
		s.history[historyKey{e.PName, e.System}] = &historyValue{
			seconds: e.BuildTime.Seconds(),
			samples: e.Samples,
		}
	}
}
