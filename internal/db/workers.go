package db

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/scheduler"
)

// Worker is a registered remote worker. Only the SHA-256 of its token is
// stored, so a copy of the database does not let anyone connect as it.
type Worker struct {
	Name string `json:"name"`
	// TokenHash is HashToken of the worker's token, empty for the node's
	// in-process worker, which needs none.
	TokenHash string    `json:"token_hash,omitempty"`
	CreatedAt time.Time `json:"created_at"`
	// LastSeen is when the worker last connected or disconnected.
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// Builds counts the builds the worker finished, succeeded or failed.
	Builds uint64 `json:"builds"`
	// Speed is the worker's build speed relative to a reference machine,
	// which the scheduler uses to estimate build times: a build that
	// takes 60 s at speed 1 is expected to take 30 s at speed 2. Zero,
	// in records written before speeds were stored, means 1.
	Speed float64 `json:"speed,omitempty"`
}

// DefaultWorkerSpeed is the speed of a worker registered without one.
const DefaultWorkerSpeed = 1.0

// EffectiveSpeed returns w.Speed within the scheduler's bounds, or
// DefaultWorkerSpeed for a record that stores none.
func (w Worker) EffectiveSpeed() float64 {
	if w.Speed == 0 {
		return DefaultWorkerSpeed
	}
	// A record written before the speed had bounds may hold any positive
	// number.
	return min(max(w.Speed, scheduler.MinSpeed), scheduler.MaxSpeed)
}

// ValidateWorkerSpeed returns an error unless speed is in
// [scheduler.MinSpeed, scheduler.MaxSpeed].
func ValidateWorkerSpeed(speed float64) error {
	if !(speed >= scheduler.MinSpeed && speed <= scheduler.MaxSpeed) {
		return fmt.Errorf("worker speed %v is out of range: give a number from %v to %v, such as 2 for a machine that builds twice as fast as one of speed 1", speed, scheduler.MinSpeed, scheduler.MaxSpeed)
	}
	return nil
}

// HashToken returns the hex SHA-256 of a worker token, the form the
// database keeps. Tokens are random, so a plain hash suffices.
func HashToken(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

func workerKey(name string) []byte { return []byte("worker/" + name) }

func workerTokenKey(hash string) []byte { return []byte("workertoken/" + hash) }

// CreateWorker registers a worker of DefaultWorkerSpeed with the hash of
// its token. It returns an error wrapping ErrExists when the name is
// taken.
func (d *DB) CreateWorker(name, tokenHash string, now time.Time) (Worker, error) {
	return d.CreateWorkerWithSpeed(name, tokenHash, DefaultWorkerSpeed, now)
}

// CreateWorkerWithSpeed registers a worker of the given build speed with
// the hash of its token. It returns an error wrapping ErrExists when the
// name is taken, and an error for a speed that ValidateWorkerSpeed
// rejects.
func (d *DB) CreateWorkerWithSpeed(name, tokenHash string, speed float64, now time.Time) (Worker, error) {
	if err := ValidateName("worker name", name); err != nil {
		return Worker{}, err
	}
	if err := ValidateWorkerSpeed(speed); err != nil {
		return Worker{}, err
	}
	w := Worker{Name: name, TokenHash: tokenHash, CreatedAt: now.UTC(), Speed: speed}
	err := d.update(func(txn *badger.Txn) error {
		var old Worker
		err := getJSON(txn, workerKey(name), &old)
		if err == nil {
			return fmt.Errorf("worker %q: %w", name, ErrExists)
		}
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		if tokenHash != "" {
			if err := txn.Set(workerTokenKey(tokenHash), []byte(name)); err != nil {
				return err
			}
		}
		return setJSON(txn, workerKey(name), w)
	})
	return w, err
}

// GetWorker returns the worker or an error wrapping ErrNotFound.
func (d *DB) GetWorker(name string) (Worker, error) {
	var w Worker
	err := d.bdb.View(func(txn *badger.Txn) error {
		return getJSON(txn, workerKey(name), &w)
	})
	if errors.Is(err, ErrNotFound) {
		return Worker{}, fmt.Errorf("worker %q: %w", name, ErrNotFound)
	}
	return w, err
}

// WorkerByToken returns the worker whose token is token, or an error
// wrapping ErrNotFound.
func (d *DB) WorkerByToken(token string) (Worker, error) {
	var w Worker
	err := d.bdb.View(func(txn *badger.Txn) error {
		item, err := txn.Get(workerTokenKey(HashToken(token)))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return ErrNotFound
		}
		if err != nil {
			return err
		}
		name, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}
		return getJSON(txn, workerKey(string(name)), &w)
	})
	if errors.Is(err, ErrNotFound) {
		return Worker{}, fmt.Errorf("worker token: %w", ErrNotFound)
	}
	return w, err
}

// ListWorkers returns every worker in name order.
func (d *DB) ListWorkers() ([]Worker, error) {
	var ws []Worker
	err := d.bdb.View(func(txn *badger.Txn) error {
		return iterate(txn, []byte("worker/"), false, 0, func(b []byte) error {
			var w Worker
			if err := json.Unmarshal(b, &w); err != nil {
				return err
			}
			ws = append(ws, w)
			return nil
		})
	})
	return ws, err
}

// DeleteWorker removes the worker and its token, so the token no longer
// authenticates. It returns an error wrapping ErrNotFound for an unknown
// name.
func (d *DB) DeleteWorker(name string) error {
	return d.update(func(txn *badger.Txn) error {
		var w Worker
		if err := getJSON(txn, workerKey(name), &w); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("worker %q: %w", name, ErrNotFound)
			}
			return err
		}
		if w.TokenHash != "" {
			if err := txn.Delete(workerTokenKey(w.TokenHash)); err != nil {
				return err
			}
		}
		return txn.Delete(workerKey(name))
	})
}

// EnsureWorker creates a record without a token for a worker that needs
// none, such as the node's in-process worker, unless one exists.
func (d *DB) EnsureWorker(name string, now time.Time) error {
	_, err := d.CreateWorker(name, "", now)
	if errors.Is(err, ErrExists) {
		return nil
	}
	return err
}

// SetWorkerSpeed stores a new build speed for the worker. It returns an
// error wrapping ErrNotFound for an unknown name, and an error for a
// speed that ValidateWorkerSpeed rejects.
func (d *DB) SetWorkerSpeed(name string, speed float64) error {
	if err := ValidateWorkerSpeed(speed); err != nil {
		return err
	}
	return d.UpdateWorker(name, func(w *Worker) { w.Speed = speed })
}

// UpdateWorker applies fn to the worker's record and stores it. It
// returns an error wrapping ErrNotFound for an unknown name, such as a
// worker revoked while it ran a build.
func (d *DB) UpdateWorker(name string, fn func(w *Worker)) error {
	return d.update(func(txn *badger.Txn) error {
		var w Worker
		if err := getJSON(txn, workerKey(name), &w); err != nil {
			if errors.Is(err, ErrNotFound) {
				return fmt.Errorf("worker %q: %w", name, ErrNotFound)
			}
			return err
		}
		fn(&w)
		return setJSON(txn, workerKey(name), w)
	})
}
