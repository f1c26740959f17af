package db

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

func evalKey(id uint64) []byte { return idKey("eval/", id) }

func projectEvalKey(org, project string, id uint64) []byte {
	return idKey("projeval/"+org+"/"+project+"/", id)
}

// CreateEvaluation queues a new evaluation of the project with the
// project's current flake and entry points, and records it as the
// project's last evaluation.
func (d *DB) CreateEvaluation(org, project string, now time.Time) (Evaluation, error) {
	id, err := nextID(d.evalSeq)
	if err != nil {
		return Evaluation{}, fmt.Errorf("allocate evaluation id: %w", err)
	}

	var e Evaluation
	err = d.update(func(txn *badger.Txn) error {
		var p Project
		if err := getJSON(txn, projectKey(org, project), &p); err != nil {
			return fmt.Errorf("project %s/%s: %w", org, project, err)
		}
		e = Evaluation{
			ID:          id,
			Org:         org,
			Project:     project,
			FlakeRef:    p.FlakeRef,
			EntryPoints: p.EntryPoints,
			Status:      EvalQueued,
			CreatedAt:   now.UTC(),
		}
		p.LastEvaluation = id
		if err := setJSON(txn, projectKey(org, project), p); err != nil {
			return err
		}
		if err := txn.Set(projectEvalKey(org, project, id), nil); err != nil {
			return err
		}
		return setJSON(txn, evalKey(id), e)
	})
	return e, err
}

// PutEvaluation replaces the stored evaluation with e.
func (d *DB) PutEvaluation(e Evaluation) error {
	return d.update(func(txn *badger.Txn) error {
		return setJSON(txn, evalKey(e.ID), e)
	})
}

// GetEvaluation returns the evaluation or ErrNotFound.
func (d *DB) GetEvaluation(id uint64) (Evaluation, error) {
	var e Evaluation
	err := d.bdb.View(func(txn *badger.Txn) error {
		return getJSON(txn, evalKey(id), &e)
	})
	if errors.Is(err, ErrNotFound) {
		return e, fmt.Errorf("evaluation %d: %w", id, ErrNotFound)
	}
	return e, err
}

// ListEvaluations returns up to limit evaluations of a project, newest
// first.
func (d *DB) ListEvaluations(org, project string, limit int) ([]Evaluation, error) {
	var es []Evaluation
	prefix := []byte("projeval/" + org + "/" + project + "/")
	err := d.bdb.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.Prefix = prefix
		opts.Reverse = true
		opts.PrefetchValues = false
		it := txn.NewIterator(opts)
		defer it.Close()

		for it.Seek(append(append([]byte{}, prefix...), 0xff)); it.ValidForPrefix(prefix); it.Next() {
			var e Evaluation
			if err := getJSON(txn, append([]byte("eval/"), it.Item().Key()[len(prefix):]...), &e); err != nil {
				return err
			}
			es = append(es, e)
			if limit > 0 && len(es) >= limit {
				break
			}
		}
		return nil
	})
	return es, err
}

// ListUnfinishedEvaluations returns every evaluation that is not in a final
// state, oldest first. The node resumes them after a restart.
func (d *DB) ListUnfinishedEvaluations() ([]Evaluation, error) {
	var es []Evaluation
	err := d.bdb.View(func(txn *badger.Txn) error {
		return iterate(txn, []byte("eval/"), false, 0, func(b []byte) error {
			var e Evaluation
			if err := json.Unmarshal(b, &e); err != nil {
				return err
			}
			if !e.Status.Finished() {
				es = append(es, e)
			}
			return nil
		})
	})
	return es, err
}
