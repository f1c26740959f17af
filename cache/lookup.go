package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

func (s *Store) narInfoKey(hashPart string) []byte {
	return []byte(s.keyPrefix + "narinfo/" + hashPart)
}

// NarInfo returns the narinfo of the store path whose hash part is
// hashPart, the 32 characters after the store directory. It returns an
// error wrapping ErrNotFound when the cache does not hold the path.
func (s *Store) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error) {
	data, err := s.narInfoBytes(ctx, hashPart)
	if err != nil {
		return nil, err
	}

	info, err := narinfo.Parse(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("read narinfo %q: stored narinfo is invalid: %w", hashPart, err)
	}

	return info, nil
}

// narInfoBytes returns the stored .narinfo file of hashPart.
func (s *Store) narInfoBytes(ctx context.Context, hashPart string) ([]byte, error) {
	return s.readNarInfo(ctx, hashPart, false)
}

// readNarInfo returns the stored .narinfo file of hashPart. With
// wantClosure set, a narinfo that names a reference the cache does not
// hold is reported as not found, in the same read transaction.
func (s *Store) readNarInfo(ctx context.Context, hashPart string, wantClosure bool) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	if !narinfo.IsHashPart(hashPart) {
		return nil, fmt.Errorf("read narinfo %q: %w: invalid hash part", hashPart, ErrNotFound)
	}

	var data []byte

	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(s.narInfoKey(hashPart))
		if err != nil {
			return err
		}

		data, err = item.ValueCopy(nil)
		if err != nil || !wantClosure {
			return err
		}

		for _, ref := range referencesOf(data) {
			if len(ref) < narinfo.HashPartLen {
				return fmt.Errorf("stored narinfo has an invalid reference %q", ref)
			}

			if refHash := string(ref[:narinfo.HashPartLen]); refHash != hashPart {
				if _, err := txn.Get(s.narInfoKey(refHash)); err != nil {
					return err
				}
			}
		}

		return nil
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("read narinfo %q: %w: %w", hashPart, ErrNotFound, err)
	}

	if err != nil {
		return nil, fmt.Errorf("read narinfo %q: %w", hashPart, err)
	}

	return data, nil
}

// HasPath reports whether the cache holds storePath, an absolute path in
// the cache's store directory. An invalid path is an error.
func (s *Store) HasPath(ctx context.Context, storePath string) (bool, error) {
	missing, err := s.Missing(ctx, []string{storePath})
	if err != nil {
		return false, err
	}

	return len(missing) == 0, nil
}

// Missing returns the paths of storePaths that the cache does not hold, in
// their input order. Every path must be an absolute path in the cache's
// store directory.
func (s *Store) Missing(ctx context.Context, storePaths []string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	hashParts := make([]string, len(storePaths))

	for i, storePath := range storePaths {
		if err := s.checkStorePath(storePath); err != nil {
			return nil, err
		}

		hashParts[i] = narinfo.HashPart(storePath)
	}

	var missing []string

	err := s.db.View(func(txn *badger.Txn) error {
		for i, hashPart := range hashParts {
			_, err := txn.Get(s.narInfoKey(hashPart))
			if errors.Is(err, badger.ErrKeyNotFound) {
				missing = append(missing, storePaths[i])
				continue
			}

			if err != nil {
				return err
			}
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up store paths: %w", err)
	}

	return missing, nil
}

// checkStorePath checks that storePath is a valid path in the cache's
// store directory.
func (s *Store) checkStorePath(storePath string) error {
	storeDir, _, err := narinfo.SplitStorePath(storePath)
	if err != nil {
		return err
	}

	if storeDir != s.cfg.StoreDir {
		return fmt.Errorf("%w: %q is not in the store directory %q", narinfo.ErrInvalidStorePath, storePath, s.cfg.StoreDir)
	}

	return nil
}

// narRecord returns the record of a file in the nar directory. It returns
// badger.ErrKeyNotFound when there is none.
func (s *Store) narRecord(fileName string) (narRecord, error) {
	var record narRecord

	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(s.narRecordKey(fileName))
		if err != nil {
			return err
		}

		return item.Value(func(value []byte) error {
			return json.Unmarshal(value, &record)
		})
	})

	return record, err
}
