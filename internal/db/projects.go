package db

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
)

const maxNameLen = 64

// ValidateName checks an organisation or project name. Names appear in
// URLs and CLI arguments, so they are limited to letters, digits, '.', '_'
// and '-', start with a letter or digit, and are at most 64 bytes long.
func ValidateName(field, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty: give a name of letters, digits, '.', '_' or '-'", field)
	}
	if len(name) > maxNameLen {
		return fmt.Errorf("%s %q is longer than %d bytes", field, name, maxNameLen)
	}
	for i, r := range name {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if i == 0 && !alnum {
			return fmt.Errorf("%s %q starts with %q: start it with a letter or digit", field, name, r)
		}
		if !alnum && r != '.' && r != '_' && r != '-' {
			return fmt.Errorf("%s %q has an invalid character %q: use letters, digits, '.', '_' or '-'", field, name, r)
		}
	}
	return nil
}

func orgKey(name string) []byte { return []byte("org/" + name) }

func projectKey(org, name string) []byte { return []byte("project/" + org + "/" + name) }

// EnsureOrg creates the organisation unless it exists and returns it.
func (d *DB) EnsureOrg(name string, now time.Time) (Org, error) {
	if err := ValidateName("organisation name", name); err != nil {
		return Org{}, err
	}
	var org Org
	err := d.update(func(txn *badger.Txn) error {
		err := getJSON(txn, orgKey(name), &org)
		if !errors.Is(err, ErrNotFound) {
			return err
		}
		org = Org{Name: name, CreatedAt: now.UTC()}
		return setJSON(txn, orgKey(name), org)
	})
	return org, err
}

// ListOrgs returns every organisation in name order.
func (d *DB) ListOrgs() ([]Org, error) {
	var orgs []Org
	err := d.bdb.View(func(txn *badger.Txn) error {
		return iterate(txn, []byte("org/"), false, 0, func(b []byte) error {
			var o Org
			if err := json.Unmarshal(b, &o); err != nil {
				return err
			}
			orgs = append(orgs, o)
			return nil
		})
	})
	return orgs, err
}

// CreateProject stores a new project, creating its organisation if needed.
// It returns ErrExists when the organisation already has a project of
// that name.
func (d *DB) CreateProject(p Project, now time.Time) (Project, error) {
	if err := ValidateName("project name", p.Name); err != nil {
		return Project{}, err
	}
	if _, err := d.EnsureOrg(p.Org, now); err != nil {
		return Project{}, err
	}
	p.CreatedAt = now.UTC()
	p.LastEvaluation = 0

	err := d.update(func(txn *badger.Txn) error {
		_, err := txn.Get(projectKey(p.Org, p.Name))
		if err == nil {
			return fmt.Errorf("project %s/%s: %w", p.Org, p.Name, ErrExists)
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		return setJSON(txn, projectKey(p.Org, p.Name), p)
	})
	return p, err
}

// GetProject returns the project or ErrNotFound.
func (d *DB) GetProject(org, name string) (Project, error) {
	var p Project
	err := d.bdb.View(func(txn *badger.Txn) error {
		return getJSON(txn, projectKey(org, name), &p)
	})
	if errors.Is(err, ErrNotFound) {
		return p, fmt.Errorf("project %s/%s: %w", org, name, ErrNotFound)
	}
	return p, err
}

// ListProjects returns the projects of one organisation, or of all when
// org is empty, in name order.
func (d *DB) ListProjects(org string) ([]Project, error) {
	prefix := "project/"
	if org != "" {
		prefix += org + "/"
	}
	var ps []Project
	err := d.bdb.View(func(txn *badger.Txn) error {
		return iterate(txn, []byte(prefix), false, 0, func(b []byte) error {
			var p Project
			if err := json.Unmarshal(b, &p); err != nil {
				return err
			}
			ps = append(ps, p)
			return nil
		})
	})
	return ps, err
}
