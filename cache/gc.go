package cache

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// RootSource lists the store paths that garbage collection keeps. The
// node implements it from its evaluation records.
type RootSource interface {
	// RecentOutputs returns the output store paths of the last n
	// evaluations of each project.
	RecentOutputs(ctx context.Context, n int) ([]string, error)
}

// GCOptions configures one garbage collection.
type GCOptions struct {
	// DryRun reports what would be removed and removes nothing.
	DryRun bool `json:"dry_run"`
}

// GCReport is the result of one garbage collection.
type GCReport struct {
	DryRun bool `json:"dry_run"`
	// MaxSize is the size cap in bytes that was enforced, 0 for none.
	MaxSize int64 `json:"max_size"`
	// SizeBefore and SizeAfter are the bytes of the stored NAR files.
	SizeBefore int64 `json:"size_before"`
	SizeAfter  int64 `json:"size_after"`
	// Paths is how many store paths the cache held before.
	Paths int `json:"paths"`
	// Kept is how many of them recent evaluations and pins keep.
	Kept int `json:"kept"`
	// Evicted are the store paths removed, or that would be removed.
	Evicted []string `json:"evicted"`
}

// gcPath is one stored narinfo as garbage collection sees it.
type gcPath struct {
	storePath string
	refs      []string // hash parts of other paths
	file      string
	origin    string
	upstream  string
	lastUsed  int64
}

// gcState is a snapshot of the cache's paths and files.
type gcState struct {
	paths     map[string]*gcPath // by hash part
	fileSizes map[string]int64   // stored NAR files by name
	pending   map[string]bool    // NAR files not downloaded yet
}

// Run removes stale uploads every quarter of Config.UploadTTL and
// collects garbage every Config.GCInterval until ctx is done, and then
// returns ctx's error. It logs the failures of a pass and keeps going.
func (s *Store) Run(ctx context.Context) error {
	uploads := time.NewTicker(s.cfg.UploadTTL / 4)
	defer uploads.Stop()

	gc := time.NewTicker(s.cfg.GCInterval)
	defer gc.Stop()

	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-uploads.C:
			if _, err := s.RemoveStaleUploads(ctx); err != nil {
				s.logger.Warn("remove stale uploads failed", "error", err)
			}
		case <-gc.C:
			if _, err := s.GC(ctx, GCOptions{}); err != nil && ctx.Err() == nil {
				s.logger.Warn("garbage collection failed", "error", err)
			}
		}
	}
}

// GC enforces Settings.MaxSize. When the NAR files exceed it, it removes
// store paths that no kept path needs until they fit: paths pulled from
// upstreams first, then uploaded ones, each least recently used first.
// Kept are the closures of the outputs of the last
// Settings.KeepEvaluations evaluations of each project (from
// Config.Roots) and of the pinned paths. A path is removed only together
// with every remaining path that refers to it, each narinfo before its
// NAR file, and a NAR file only when no remaining narinfo names it.
// Uploads and pulls wait while it deletes.
func (s *Store) GC(ctx context.Context, opts GCOptions) (GCReport, error) {
	settings := s.Settings()

	roots, err := s.gcRoots(ctx, settings)
	if err != nil {
		return GCReport{}, fmt.Errorf("collect garbage: %w", err)
	}

	if !opts.DryRun {
		s.gcMu.Lock()
		defer s.gcMu.Unlock()
	}

	state, err := s.loadGCState(ctx)
	if err != nil {
		return GCReport{}, fmt.Errorf("collect garbage: %w", err)
	}

	kept := state.closure(roots, settings.Pins)
	victims, sizeAfter := state.plan(kept, settings.MaxSize)

	report := GCReport{
		DryRun:     opts.DryRun,
		MaxSize:    settings.MaxSize,
		SizeBefore: state.totalSize(),
		SizeAfter:  sizeAfter,
		Paths:      len(state.paths),
		Kept:       len(kept),
		Evicted:    []string{},
	}

	for _, group := range victims {
		for _, hashPart := range group {
			report.Evicted = append(report.Evicted, state.paths[hashPart].storePath)
		}
	}

	if opts.DryRun {
		return report, nil
	}

	if err := s.evict(ctx, state, victims); err != nil {
		return report, fmt.Errorf("collect garbage: %w", err)
	}

	evicted := map[string]bool{}
	for _, group := range victims {
		for _, hashPart := range group {
			evicted[hashPart] = true
		}
	}

	if err := s.saveLastUsed(state, evicted); err != nil {
		return report, fmt.Errorf("collect garbage: %w", err)
	}

	if len(report.Evicted) > 0 {
		s.logger.Info("collected garbage", "evicted", len(report.Evicted), "size_before", report.SizeBefore,
			"size_after", report.SizeAfter, "max_size", report.MaxSize)
	}

	return report, nil
}

// gcRoots returns the hash parts of the recent evaluations' outputs.
func (s *Store) gcRoots(ctx context.Context, settings Settings) ([]string, error) {
	if s.cfg.Roots == nil {
		return nil, nil
	}

	keep := settings.KeepEvaluations
	if keep == 0 {
		keep = DefaultKeepEvaluations
	}

	outputs, err := s.cfg.Roots.RecentOutputs(ctx, keep)
	if err != nil {
		return nil, fmt.Errorf("list outputs of recent evaluations: %w", err)
	}

	var roots []string

	for _, output := range outputs {
		if _, _, err := narinfo.SplitStorePath(output); err == nil {
			roots = append(roots, narinfo.HashPart(output))
		}
	}

	return roots, nil
}

// loadGCState reads every narinfo, path record and NAR record.
func (s *Store) loadGCState(ctx context.Context) (*gcState, error) {
	state := &gcState{paths: map[string]*gcPath{}, fileSizes: map[string]int64{}, pending: map[string]bool{}}

	err := s.db.View(func(txn *badger.Txn) error {
		if err := s.scan(ctx, txn, "narinfo/", func(hashPart string, value []byte) error {
			info, err := narinfo.Parse(bytes.NewReader(value))
			if err != nil {
				return fmt.Errorf("read narinfo %q: stored narinfo is invalid: %w", hashPart, err)
			}

			p := &gcPath{storePath: info.StorePath, file: strings.TrimPrefix(info.URL, "nar/"), origin: originUpload}

			for _, ref := range info.References {
				if refHash := narinfo.HashPart(ref); refHash != hashPart {
					p.refs = append(p.refs, refHash)
				}
			}

			state.paths[hashPart] = p

			return nil
		}); err != nil {
			return err
		}

		if err := s.scan(ctx, txn, "meta/", func(hashPart string, value []byte) error {
			var meta pathMeta
			if err := json.Unmarshal(value, &meta); err != nil {
				return fmt.Errorf("read path record %q: %w", hashPart, err)
			}

			if p := state.paths[hashPart]; p != nil {
				p.origin = meta.Origin
				p.upstream = meta.Upstream
				p.lastUsed = meta.LastUsed
			}

			return nil
		}); err != nil {
			return err
		}

		if err := s.scan(ctx, txn, "pull/", func(fileName string, _ []byte) error {
			state.pending[fileName] = true
			return nil
		}); err != nil {
			return err
		}

		return s.scan(ctx, txn, "nar/", func(fileName string, value []byte) error {
			var record narRecord
			if err := json.Unmarshal(value, &record); err != nil {
				return fmt.Errorf("read NAR record %q: %w", fileName, err)
			}

			state.fileSizes[fileName] = int64(record.FileSize)

			return nil
		})
	})
	if err != nil {
		return nil, err
	}

	for hashPart, p := range state.paths {
		if used, ok := s.lastUsed.Load(hashPart); ok && used.(int64) > p.lastUsed {
			p.lastUsed = used.(int64)
		}
	}

	return state, nil
}

// scan calls fn with the key suffix and value of every key of the cache
// under prefix.
func (s *Store) scan(ctx context.Context, txn *badger.Txn, prefix string, fn func(name string, value []byte) error) error {
	full := []byte(s.keyPrefix + prefix)

	it := txn.NewIterator(badger.IteratorOptions{Prefix: full, PrefetchValues: true, PrefetchSize: 100})
	defer it.Close()

	for it.Rewind(); it.Valid(); it.Next() {
		if err := ctx.Err(); err != nil {
			return err
		}

		item := it.Item()
		name := string(item.Key()[len(full):])

		if err := item.Value(func(value []byte) error { return fn(name, value) }); err != nil {
			return err
		}
	}

	return nil
}

func (st *gcState) totalSize() int64 {
	var total int64
	for _, size := range st.fileSizes {
		total += size
	}

	return total
}

// closure returns the hash parts of roots, of the paths whose names match
// pins, and of everything they refer to, among the stored paths.
func (st *gcState) closure(roots, pins []string) map[string]bool {
	kept := map[string]bool{}

	var stack []string

	for _, root := range roots {
		if st.paths[root] != nil {
			stack = append(stack, root)
		}
	}

	for hashPart, p := range st.paths {
		if pinned(path.Base(p.storePath), pins) {
			stack = append(stack, hashPart)
		}
	}

	for len(stack) > 0 {
		hashPart := stack[len(stack)-1]
		stack = stack[:len(stack)-1]

		if kept[hashPart] || st.paths[hashPart] == nil {
			continue
		}

		kept[hashPart] = true
		stack = append(stack, st.paths[hashPart].refs...)
	}

	return kept
}

// pinned reports whether the store path base name matches a pin: the
// base name itself or a pattern on the name after the hash.
func pinned(baseName string, pins []string) bool {
	name := baseName[min(len(baseName), narinfo.HashPartLen+1):]

	for _, pin := range pins {
		if pin == baseName {
			return true
		}

		if ok, _ := path.Match(pin, name); ok {
			return true
		}
	}

	return false
}

// plan picks the groups of paths to remove until the stored files fit in
// maxSize, and returns them with the size that remains. Each group is a
// path and every remaining path that refers to it, directly or not,
// referrers first.
func (st *gcState) plan(kept map[string]bool, maxSize int64) ([][]string, int64) {
	size := st.totalSize()
	if maxSize <= 0 || size <= maxSize {
		return nil, size
	}

	referrers := map[string][]string{}
	users := map[string]int{}

	for hashPart, p := range st.paths {
		for _, ref := range p.refs {
			referrers[ref] = append(referrers[ref], hashPart)
		}

		users[p.file]++
	}

	var candidates []string

	for hashPart := range st.paths {
		if !kept[hashPart] {
			candidates = append(candidates, hashPart)
		}
	}

	slices.SortFunc(candidates, func(a, b string) int {
		pa, pb := st.paths[a], st.paths[b]
		return cmp.Or(cmp.Compare(pa.lastUsed, pb.lastUsed), strings.Compare(a, b))
	})

	removed := map[string]bool{}

	var groups [][]string

	// Pulled paths go first. A pulled path that an uploaded one needs
	// waits for the second round, where uploads may go too.
	for _, allowUploads := range []bool{false, true} {
		for _, candidate := range candidates {
			if size <= maxSize {
				return groups, size
			}

			if removed[candidate] {
				continue
			}

			group := st.referrerClosure(candidate, referrers, removed)
			if !allowUploads && slices.ContainsFunc(group, func(h string) bool { return st.paths[h].origin != originUpstream }) {
				continue
			}

			for _, hashPart := range group {
				removed[hashPart] = true

				file := st.paths[hashPart].file
				if users[file]--; users[file] == 0 {
					size -= st.fileSizes[file]
				}
			}

			groups = append(groups, group)
		}
	}

	return groups, size
}

// referrerClosure returns hashPart and every path not yet removed that
// refers to it, directly or not, with referrers before what they refer
// to.
func (st *gcState) referrerClosure(hashPart string, referrers map[string][]string, removed map[string]bool) []string {
	var order []string

	seen := map[string]bool{}

	var visit func(h string)
	visit = func(h string) {
		if seen[h] || removed[h] {
			return
		}

		seen[h] = true

		for _, r := range referrers[h] {
			visit(r)
		}

		order = append(order, h)
	}

	// Each path is appended after its referrers.
	visit(hashPart)

	return order
}

// evict deletes the narinfos of each group in one transaction, then the
// NAR files that no remaining narinfo names.
func (s *Store) evict(ctx context.Context, state *gcState, groups [][]string) error {
	users := map[string]int{}
	for _, p := range state.paths {
		users[p.file]++
	}

	for _, group := range groups {
		if err := ctx.Err(); err != nil {
			return err
		}

		var freeFiles []string

		err := s.db.Update(func(txn *badger.Txn) error {
			for _, hashPart := range group {
				if err := txn.Delete(s.narInfoKey(hashPart)); err != nil {
					return err
				}

				if err := txn.Delete(s.metaKey(hashPart)); err != nil {
					return err
				}
			}

			return nil
		})
		if err != nil {
			return err
		}

		removed := make([]string, 0, len(group))

		for _, hashPart := range group {
			s.lastUsed.Delete(hashPart)
			s.metrics.evictions.Inc()
			removed = append(removed, state.paths[hashPart].storePath)

			file := state.paths[hashPart].file
			if users[file]--; users[file] == 0 {
				freeFiles = append(freeFiles, file)
			}
		}

		s.pathsRemoved(removed...)

		if err := s.removeNARFiles(state, freeFiles); err != nil {
			return err
		}
	}

	return nil
}

// removeNARFiles deletes the records of NAR files and then the files.
func (s *Store) removeNARFiles(state *gcState, files []string) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		for _, file := range files {
			if err := txn.Delete(s.narRecordKey(file)); err != nil {
				return err
			}

			if err := txn.Delete(s.pullKey(file)); err != nil {
				return err
			}
		}

		return nil
	})
	if err != nil {
		return err
	}

	var errs []error

	for _, file := range files {
		if err := os.Remove(filepath.Join(s.narDir, file)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
			continue
		}

		s.metrics.evictedBytes.Add(float64(state.fileSizes[file]))
	}

	return errors.Join(errs...)
}

// saveLastUsed stores the read times that are only in memory, so least
// recently used order survives a restart.
func (s *Store) saveLastUsed(state *gcState, evicted map[string]bool) error {
	batch := s.db.NewWriteBatch()
	defer batch.Cancel()

	for hashPart, p := range state.paths {
		used, ok := s.lastUsed.Load(hashPart)
		if !ok || evicted[hashPart] {
			continue
		}

		meta, err := json.Marshal(pathMeta{Origin: p.origin, Upstream: p.upstream, LastUsed: max(used.(int64), p.lastUsed)})
		if err != nil {
			return err
		}

		if err := batch.Set(s.metaKey(hashPart), meta); err != nil {
			return err
		}
	}

	return batch.Flush()
}
