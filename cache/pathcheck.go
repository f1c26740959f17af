package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// errPathStored is returned by checkNewPath when the cache already holds
// the path with the same NarHash and NarSize. Callers report success
// without storing anything, because nix uploads a path again when it
// does not know that the cache holds it.
var errPathStored = errors.New("store path is already in the cache")

// lockPath locks the narinfo of hashPart against other writers until the
// returned function is called. Hash parts share 64 mutexes, so unrelated
// paths rarely wait for each other.
func (s *Store) lockPath(hashPart string) (unlock func()) {
	h := fnv.New32a()
	h.Write([]byte(hashPart))

	mu := &s.pathLocks[h.Sum32()%uint32(len(s.pathLocks))]
	mu.Lock()

	return mu.Unlock
}

// checkNewPath checks that ni may be stored. When the cache holds ni's
// store path with the same NarHash and NarSize it returns errPathStored.
// Otherwise errors wrap ErrConflict for another NarHash, ErrHashMismatch
// when only NarSize differs, and ErrMissingReference when a reference
// other than the path itself is not in the cache. The caller holds
// lockPath of ni's hash part and gcMu for reading, so that the answer
// holds until it writes.
func (s *Store) checkNewPath(ctx context.Context, ni *narinfo.NarInfo) error {
	stored, err := s.NarInfo(ctx, narinfo.HashPart(ni.StorePath))

	switch {
	case err == nil:
		return compareStoredPath(stored, ni)
	case !errors.Is(err, ErrNotFound):
		return err
	}

	missing, err := s.missingReferences(ctx, ni)
	if err != nil {
		return err
	}

	if len(missing) > 0 {
		return fmt.Errorf("%w: %s, put the references first", ErrMissingReference, quoteList(missing))
	}

	return nil
}

// compareStoredPath compares a new narinfo with the stored one of the
// same store path.
func compareStoredPath(stored, ni *narinfo.NarInfo) error {
	storedHash, newHash := formatNix32(stored.NarHash), formatNix32(ni.NarHash)

	if storedHash != newHash {
		return fmt.Errorf("%w: %s has NarHash %s in the cache, not %s", ErrConflict, ni.StorePath, storedHash, newHash)
	}

	if stored.NarSize != ni.NarSize {
		return fmt.Errorf("%w: NarSize is %d but the cache holds %s with NarHash %s and %d bytes", ErrHashMismatch, ni.NarSize, ni.StorePath, storedHash, stored.NarSize)
	}

	return errPathStored
}

// quoteList formats paths as a comma-separated list of quoted strings.
func quoteList(paths []string) string {
	quoted := make([]string, len(paths))
	for i, p := range paths {
		quoted[i] = fmt.Sprintf("%q", p)
	}

	return strings.Join(quoted, ", ")
}
