package cache

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// RemoveStaleUploads deletes uploaded NARs that have waited longer than
// Config.UploadTTL for their narinfo, and temporary files that were last
// written that long ago, such as those of an interrupted upload or a
// crash. Age is measured from the file's modification time to
// Config.Clock's now. It returns how many files it removed.
func (s *Store) RemoveStaleUploads(ctx context.Context) (int, error) {
	cutoff := s.cfg.Clock.Now().Add(-s.cfg.UploadTTL)
	removed := 0

	var errs []error

	for _, dir := range []string{s.incomingDir, s.tmpDir} {
		entries, err := os.ReadDir(dir)
		if err != nil {
			errs = append(errs, err)
			continue
		}

		for _, entry := range entries {
			if err := ctx.Err(); err != nil {
				return removed, err
			}

			info, err := entry.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}

			if err != nil {
				errs = append(errs, err)
				continue
			}

			if !info.Mode().IsRegular() || !info.ModTime().Before(cutoff) {
				continue
			}

			path := filepath.Join(dir, entry.Name())

			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
				continue
			}

			removed++

			s.logger.Info("removed stale upload", "file", path, "modified", info.ModTime())
		}
	}

	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("remove stale uploads: %w", err)
	}

	return removed, nil
}
