package db

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/dgraph-io/badger/v4"
)

func buildKey(id uint64) []byte { return idKey("build/", id) }

func evalBuildKey(evalID, buildID uint64) []byte {
	return idKey(string(idKey("evalbuild/", evalID))+"/", buildID)
}

// drvBuildPrefix is the prefix of the index keys of a derivation's
// builds. The NUL byte ends the path, so no path's keys share the prefix
// of a longer path.
func drvBuildPrefix(drvPath string) []byte {
	return []byte("drvbuild/" + drvPath + "\x00")
}

// drvBuildKey is the index key of a build of drvPath. Its value is the
// build's evaluation ID, see drvBuildValue.
func drvBuildKey(drvPath string, buildID uint64) []byte {
	return idKey(string(drvBuildPrefix(drvPath)), buildID)
}

func drvBuildValue(evalID uint64) []byte {
	return binary.BigEndian.AppendUint64(nil, evalID)
}

// drvIndexDoneKey marks a database whose builds are all in the index of
// builds by derivation, see indexBuildsByDerivation.
var drvIndexDoneKey = []byte("meta/drvbuild-index")

// CreateBuilds assigns IDs to the builds of one evaluation and stores them,
// as PutBuild does. It sets ID and EvalID on each element of bs.
func (d *DB) CreateBuilds(evalID uint64, bs []Build) error {
	for i := range bs {
		id, err := nextID(d.buildSeq)
		if err != nil {
			return fmt.Errorf("allocate build id: %w", err)
		}
		bs[i].ID = id
		bs[i].EvalID = evalID
		bs[i].clearStale()
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
		if err := wb.Set(drvBuildKey(b.DrvPath, b.ID), drvBuildValue(evalID)); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// PutBuild replaces the stored build with b, after it clears the fields
// that do not apply to b's status: the wait of a finished build and the
// worker of a queued one. The ID and DrvPath of b must not change.
func (d *DB) PutBuild(b Build) error {
	b.clearStale()
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
			bk := append([]byte("build/"), k[len(prefix):]...)
			var b Build
			if err := getJSON(txn, bk, &b); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
			keys = append(keys, k, bk)
			if b.DrvPath != "" {
				keys = append(keys, drvBuildKey(b.DrvPath, b.ID))
			}
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

// BuildsOfDerivation returns up to limit builds of a derivation, from
// every evaluation, newest first. A limit of 0 returns them all.
func (d *DB) BuildsOfDerivation(drvPath string, limit int) ([]Build, error) {
	prefix := drvBuildPrefix(drvPath)
	var bs []Build
	err := d.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		opts.PrefetchValues = false
		opts.Reverse = true
		it := txn.NewIterator(opts)
		defer it.Close()

		for it.Seek(append(slices.Clone(prefix), 0xff)); it.ValidForPrefix(prefix); it.Next() {
			id := binary.BigEndian.Uint64(it.Item().Key()[len(prefix):])
			var b Build
			err := getJSON(txn, buildKey(id), &b)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			bs = append(bs, b)
			if limit > 0 && len(bs) >= limit {
				break
			}
		}
		return nil
	})
	return bs, err
}

// FindBuild returns the build of drvPath in an evaluation, or an error
// wrapping ErrNotFound.
func (d *DB) FindBuild(evalID uint64, drvPath string) (Build, error) {
	prefix := drvBuildPrefix(drvPath)
	var buildID uint64
	err := d.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		it := txn.NewIterator(opts)
		defer it.Close()

		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			var inEval uint64
			err := it.Item().Value(func(v []byte) error {
				if len(v) == 8 {
					inEval = binary.BigEndian.Uint64(v)
				}
				return nil
			})
			if err != nil {
				return err
			}
			if inEval == evalID {
				buildID = binary.BigEndian.Uint64(it.Item().Key()[len(prefix):])
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return Build{}, err
	}
	if buildID == 0 {
		return Build{}, fmt.Errorf("build of %q in evaluation %d: %w", drvPath, evalID, ErrNotFound)
	}
	return d.GetBuild(buildID)
}

// indexBuildsByDerivation adds every stored build to the index that
// BuildsOfDerivation reads, once per database: databases written before
// the index existed lack it.
func (d *DB) indexBuildsByDerivation() error {
	done := false
	err := d.bdb.View(func(txn *badger.Txn) error {
		_, err := txn.Get(drvIndexDoneKey)
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		done = err == nil
		return err
	})
	if err != nil || done {
		return err
	}

	wb := d.bdb.NewWriteBatch()
	defer wb.Cancel()
	err = d.bdb.View(func(txn *badger.Txn) error {
		return iterate(txn, []byte("build/"), false, 0, func(v []byte) error {
			var b Build
			if err := json.Unmarshal(v, &b); err != nil {
				return err
			}
			return wb.Set(drvBuildKey(b.DrvPath, b.ID), drvBuildValue(b.EvalID))
		})
	})
	if err != nil {
		return err
	}
	if err := wb.Set(drvIndexDoneKey, nil); err != nil {
		return err
	}
	return wb.Flush()
}
