// Package db stores the node's CI records (organisations, projects,
// evaluations and builds) in the embedded badger database that the node
// opens once and shares with the cache.
package db

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/dgraph-io/badger/v4"
)

// ErrNotFound is returned when a record does not exist.
var ErrNotFound = errors.New("not found")

// ErrExists is returned when creating a record whose name is taken.
var ErrExists = errors.New("already exists")

// DB is the node's record store. It is safe for concurrent use.
type DB struct {
	bdb      *badger.DB
	evalSeq  *badger.Sequence
	buildSeq *badger.Sequence
}

// Open opens or creates the badger database in dir. The caller closes the
// returned DB, which also closes the badger handle returned by Badger.
func Open(dir string, logger *slog.Logger) (*DB, error) {
	opts := badger.DefaultOptions(dir).WithLogger(badgerLogger{logger.With("component", "badger")})
	bdb, err := badger.Open(opts)
	if err != nil {
		return nil, fmt.Errorf("open database %q: %w", dir, err)
	}

	// Each sequence leases a range of IDs. Close returns the unused rest,
	// but a crash skips it, so IDs grow and may have gaps, as the IDs of
	// a SQL sequence do.
	evalSeq, err := bdb.GetSequence([]byte("seq/evaluation"), 1)
	if err != nil {
		bdb.Close()
		return nil, fmt.Errorf("open evaluation id sequence: %w", err)
	}
	buildSeq, err := bdb.GetSequence([]byte("seq/build"), 100)
	if err != nil {
		evalSeq.Release()
		bdb.Close()
		return nil, fmt.Errorf("open build id sequence: %w", err)
	}

	d := &DB{bdb: bdb, evalSeq: evalSeq, buildSeq: buildSeq}
	if err := d.indexBuildsByDerivation(); err != nil {
		d.Close()
		return nil, fmt.Errorf("index builds by derivation in %q: %w", dir, err)
	}
	return d, nil
}

// Badger returns the underlying badger handle for other components, such
// as the cache, that keep their own keys in the same database.
func (d *DB) Badger() *badger.DB { return d.bdb }

// Close releases the ID sequences and closes the database.
func (d *DB) Close() error {
	return errors.Join(d.evalSeq.Release(), d.buildSeq.Release(), d.bdb.Close())
}

// maxConflictRetries bounds how often update runs a transaction again
// after badger reports a conflict with a concurrent one.
const maxConflictRetries = 10

// update runs fn in a read-write transaction and runs it again when a
// concurrent transaction wrote a key it read, such as two evaluations of
// one project that both update the project's last evaluation.
func (d *DB) update(fn func(txn *badger.Txn) error) error {
	var err error
	for range maxConflictRetries {
		err = d.bdb.Update(fn)
		if !errors.Is(err, badger.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("transaction still conflicts after %d attempts: %w", maxConflictRetries, err)
}

func nextID(seq *badger.Sequence) (uint64, error) {
	// Sequences start at 0; IDs start at 1 so that 0 can mean "none".
	for {
		id, err := seq.Next()
		if err != nil {
			return 0, err
		}
		if id != 0 {
			return id, nil
		}
	}
}

func idKey(prefix string, id uint64) []byte {
	k := make([]byte, len(prefix), len(prefix)+8)
	copy(k, prefix)
	return binary.BigEndian.AppendUint64(k, id)
}

func getJSON(txn *badger.Txn, key []byte, v any) error {
	item, err := txn.Get(key)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return ErrNotFound
	}
	if err != nil {
		return err
	}
	return item.Value(func(b []byte) error { return json.Unmarshal(b, v) })
}

func setJSON(txn *badger.Txn, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return txn.Set(key, b)
}

// iterate calls fn with the value of every key under prefix, in key order,
// newest first when reverse is set, stopping after limit values (0 means
// no limit).
func iterate(txn *badger.Txn, prefix []byte, reverse bool, limit int, fn func(val []byte) error) error {
	opts := badger.DefaultIteratorOptions
	opts.Prefix = prefix
	opts.Reverse = reverse
	it := txn.NewIterator(opts)
	defer it.Close()

	seek := prefix
	if reverse {
		seek = append(append([]byte{}, prefix...), 0xff)
	}
	n := 0
	for it.Seek(seek); it.ValidForPrefix(prefix); it.Next() {
		if err := it.Item().Value(fn); err != nil {
			return err
		}
		n++
		if limit > 0 && n >= limit {
			break
		}
	}
	return nil
}

// FormatID renders a record ID the way the API and CLI show it.
func FormatID(id uint64) string { return strconv.FormatUint(id, 10) }

// badgerLogger sends badger's own log lines to slog. Badger's info lines
// are routine (compactions, value log GC) so they go out at debug level.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, a ...any)   { b.l.Error(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Warningf(f string, a ...any) { b.l.Warn(fmt.Sprintf(f, a...)) }
func (b badgerLogger) Infof(f string, a ...any) {
	b.l.Log(context.Background(), levelTrace, fmt.Sprintf(f, a...))
}
func (b badgerLogger) Debugf(f string, a ...any) {
	b.l.Log(context.Background(), levelTrace, fmt.Sprintf(f, a...))
}

// levelTrace is below slog.LevelDebug: badger logs every write at its info
// and debug levels, which would drown the node's own debug log.
const levelTrace = slog.LevelDebug - 4
