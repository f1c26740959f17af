package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// logStore keeps one build log file per derivation, named after the .drv
// file's base name, as `nix log` looks logs up. It is safe for concurrent
// use as long as one derivation has one writer at a time, which the
// scheduler guarantees by never building a derivation twice at once.
type logStore struct {
	dir string
}

func newLogStore(dir string) (*logStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	return &logStore{dir: dir}, nil
}

// logFile returns the file name of a derivation's log, rejecting anything
// that is not a plain .drv base name so a request cannot leave the log
// directory.
func (s *logStore) logFile(drvPath string) (string, error) {
	base := path.Base(drvPath)
	if !strings.HasSuffix(base, ".drv") || strings.ContainsAny(base, "/\\\x00") || strings.HasPrefix(base, ".") {
		return "", fmt.Errorf("derivation path %q is invalid: give a store path ending in .drv", drvPath)
	}
	return filepath.Join(s.dir, base+".log"), nil
}

// Create truncates the derivation's log and opens it for writing. The
// caller closes the file.
func (s *logStore) Create(drvPath string) (*os.File, error) {
	name, err := s.logFile(drvPath)
	if err != nil {
		return nil, err
	}
	return os.Create(name)
}

// OpenLog opens the derivation's log for reading. It returns an error
// wrapping fs.ErrNotExist when there is none.
func (s *logStore) OpenLog(_ context.Context, drvPath string) (io.ReadCloser, error) {
	name, err := s.logFile(drvPath)
	if err != nil {
		return nil, err
	}
	return os.Open(name)
}
