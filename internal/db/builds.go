package db

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

func buildKey(id uint64) []byte { return idKey("build/", id) }

func evalBuildKey(evalID, buildID uint64) []byte {
	return idKey(string(idKey("evalbuild/", evalID))+"/", buildID)
}

// CreateBuilds assigns IDs to the builds of one evaluation and stores them.
// It sets ID and EvalID on each element of bs.
func (d *DB) CreateBuilds(evalID uint64, bs []Build) error {
	for i := range bs {
		id, err := nextID(d.buildSeq)
		if err != nil {
			return fmt.Errorf("allocate build id: %w", err)
		}
		bs[i].ID = id
		bs[i].EvalID = evalID
	}

	// A write batch splits the writes into transactions that fit badger's
	// size limit; an evaluation of nixpkgs has tens of thousands of builds.
	wb := d.bdb.NewWriteBatch()
	defer wb.Cancel()
	for _, b := range bs {
		v, err := json.Marshal(b)
		if err != nil {
			return err
		}
		if err := wb.Set(buildKey(b.ID), v); err != nil {
			return err
		}
		if err := wb.Set(evalBuildKey(evalID, b.ID), nil); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// PutBuild replaces the stored build with b.
func (d *DB) PutBuild(b Build) error {
	return d.update(func(txn *badger.Txn) error {
		return setJSON(txn, buildKey(b.ID), b)
	})
}

// GetBuild returns the build or ErrNotFound.
func (d *DB) GetBuild(id uint64) (Build, error) {
	var b Build
	err := d.bdb.View(func(txn *badger.Txn) error {
		return getJSON(txn, buildKey(id), &b)
	})
	if errors.Is(err, ErrNotFound) {
		return b, fmt.Errorf("build %d: %w", id, ErrNotFound)
	}
	return b, err
}

// ListBuilds returns the builds of an evaluation in ID order.
func (d *DB) ListBuilds(evalID uint64) ([]Build, error) {
	prefix := append(idKey("evalbuild/", evalID), '/')
	var bs []Build
	err := d.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()

		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			var b Build
			if err := getJSON(txn, append([]byte("build/"), it.Item().Key()[len(prefix):]...), &b); err != nil {
				return err
			}
			bs = append(bs, b)
		}
		return nil
	})
	return bs, err
}

// DeleteBuilds removes every build of an evaluation.
func (d *DB) DeleteBuilds(evalID uint64) error {
	prefix := append(idKey("evalbuild/", evalID), '/')
	var keys [][]byte
	err := d.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			k := it.Item().KeyCopy(nil)
			keys = append(keys, k, append([]byte("build/"), k[len(prefix):]...))
		}
		return nil
	})
	if err != nil {
		return err
	}
	wb := d.bdb.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}
