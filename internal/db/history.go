package db

import (
	"errors"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// historyKey holds the scheduler's build time estimates as one record.
var historyKey = []byte("scheduler/history")

// BuildTimeEstimate is the scheduler's moving average of the build times
// of one derivation name without its version on one system, at speed 1.
type BuildTimeEstimate struct {
	PName     string        `json:"pname"`
	System    string        `json:"system"`
	BuildTime time.Duration `json:"build_time_ns"`
	Samples   int           `json:"samples"`
}

// PutBuildTimeEstimates replaces the stored estimates with es.
func (d *DB) PutBuildTimeEstimates(es []BuildTimeEstimate) error {
	return d.update(func(txn *badger.Txn) error {
		return setJSON(txn, historyKey, es)
	})
}

// BuildTimeEstimates returns the stored estimates, none before the first
// PutBuildTimeEstimates.
func (d *DB) BuildTimeEstimates() ([]BuildTimeEstimate, error) {
	var es []BuildTimeEstimate
	err := d.bdb.View(func(txn *badger.Txn) error {
		return getJSON(txn, historyKey, &es)
	})
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}
	return es, err
}
