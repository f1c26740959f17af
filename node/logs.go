package node

import (
	"context"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// MaxLogSize bounds the bytes of one derivation's build log, all attempts
// together. Output past it is dropped after a line that reports the cut.
const MaxLogSize = 64 << 20

// logStore keeps one build log file per derivation, named after the .drv
// file's base name, as `nix log` looks logs up. Each attempt to build the
// derivation appends to the file. It is safe for concurrent use as long as
// one derivation has one writer at a time, which the scheduler guarantees
// by never building a derivation twice at once.
type logStore struct {
	dir string
	// maxSize bounds each file in bytes, see MaxLogSize.
	maxSize int64
}

func newLogStore(dir string) (*logStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create log directory: %w", err)
	}
	return &logStore{dir: dir, maxSize: MaxLogSize}, nil
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

// Open opens the derivation's log for appending and writes a line that
// marks the start of a new attempt at now on workerID, so the output of an
// earlier attempt, such as one cut off by a crash, stays readable above
// it. The caller closes the returned log.
func (s *logStore) Open(drvPath string, now time.Time, workerID string) (*buildLog, error) {
	name, err := s.logFile(drvPath)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	info, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}

	l := &buildLog{f: f, size: info.Size(), max: s.maxSize}
	header := fmt.Sprintf("gradient: build attempt started at %s on worker %s\n", now.UTC().Format(time.RFC3339), workerID)
	if l.size > 0 {
		header = "\n" + header
	}
	// The line goes in even past the limit, so that every attempt shows.
	n, err := f.WriteString(header)
	l.size += int64(n)
	if err != nil {
		f.Close()
		return nil, err
	}
	return l, nil
}

// buildLog is one attempt's writer of a build log. It drops output past
// the log's size limit and writes, once, a line that reports the cut. The short
// lines it writes itself may take the file a little past the limit.
type buildLog struct {
	f *os.File
	// size is the file's size, and max its limit.
	size, max int64
	cut       bool
}

// Write appends p, or what fits of it, and returns len(p) so that the
// build goes on when output is dropped.
func (l *buildLog) Write(p []byte) (int, error) {
	room := max(l.max-l.size, 0)
	if int64(len(p)) <= room {
		n, err := l.f.Write(p)
		l.size += int64(n)
		return n, err
	}

	n, err := l.f.Write(p[:room])
	l.size += int64(n)
	if err != nil {
		return n, err
	}
	if !l.cut {
		l.cut = true
		msg := fmt.Sprintf("\ngradient: log cut: it reached the limit of %d bytes, later output is dropped\n", l.max)
		m, err := l.f.WriteString(msg)
		l.size += int64(m)
		if err != nil {
			return n, err
		}
	}
	return len(p), nil
}

// Close closes the file.
func (l *buildLog) Close() error { return l.f.Close() }

// OpenLog opens the derivation's log for reading. It returns an error
// wrapping fs.ErrNotExist when there is none.
func (s *logStore) OpenLog(_ context.Context, drvPath string) (io.ReadCloser, error) {
	name, err := s.logFile(drvPath)
	if err != nil {
		return nil, err
	}
	return os.Open(name)
}
