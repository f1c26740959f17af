package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

var (
	// errClosed is returned for downloads started after Close.
	errClosed = errors.New("cache is closed")
	// errEvicted is returned by a download whose path garbage collection
	// removed meanwhile. Its bytes are checked, so the readers that follow
	// it still get a complete file, but it is not stored.
	errEvicted = errors.New("path evicted during the download")
)

// downloadBufferSize is the size of the buffer of one NAR download.
const downloadBufferSize = 256 << 10

// narFlight is one download of a NAR file from an upstream into a
// temporary file. Any number of readers follow the file as it grows. They
// get every byte but the last one until the download is checked and
// committed, so a client never receives a complete response for a NAR
// that fails its checks.
type narFlight struct {
	fileName string
	info     *narinfo.NarInfo

	// mu guards the fields below.
	mu sync.Mutex
	// path is the temporary file, and the file in the nar directory
	// after the commit.
	path    string
	written int64
	// contentLength is the upstream's Content-Length of the file, or -1
	// before the response arrives or when it has none.
	contentLength int64
	done          bool
	err           error
	// changed is closed and replaced whenever the fields above change.
	changed chan struct{}
}

func (f *narFlight) update(change func()) {
	f.mu.Lock()
	defer f.mu.Unlock()

	change()
	close(f.changed)
	f.changed = make(chan struct{})
}

type flightState struct {
	path          string
	written       int64
	contentLength int64
	done          bool
	err           error
	changed       <-chan struct{}
}

func (f *narFlight) state() flightState {
	f.mu.Lock()
	defer f.mu.Unlock()

	return flightState{path: f.path, written: f.written, contentLength: f.contentLength, done: f.done, err: f.err, changed: f.changed}
}

// wait blocks until the download has written more than min bytes or
// ended, or until ctx is done.
func (f *narFlight) wait(ctx context.Context, minBytes int64) (flightState, error) {
	for {
		st := f.state()
		if st.done || st.written > minBytes {
			return st, nil
		}

		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-st.changed:
		}
	}
}

// flightReader reads a narFlight's file from the start as it grows.
type flightReader struct {
	ctx    context.Context
	flight *narFlight
	file   *os.File
	offset int64
}

// newReader opens the flight's file for a reader that stops with ctx. The
// caller closes it.
func (f *narFlight) newReader(ctx context.Context) (*flightReader, error) {
	f.mu.Lock()
	defer f.mu.Unlock()

	if f.done && f.err != nil {
		return nil, f.err
	}

	file, err := os.Open(f.path)
	if errors.Is(err, fs.ErrNotExist) && f.done {
		// The download ended without storing the file: its path was
		// evicted while it ran.
		return nil, fmt.Errorf("open pulled NAR %q: %w", f.fileName, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}

	return &flightReader{ctx: ctx, flight: f, file: file}, nil
}

func (r *flightReader) Read(p []byte) (int, error) {
	for {
		st := r.flight.state()
		if st.err != nil {
			return 0, st.err
		}

		// The last byte is held back until the download is committed.
		available := st.written
		if !st.done {
			available--
		}

		if r.offset < available {
			n := int64(len(p))
			if n > available-r.offset {
				n = available - r.offset
			}

			read, err := r.file.ReadAt(p[:n], r.offset)
			r.offset += int64(read)

			if errors.Is(err, io.EOF) && read > 0 {
				err = nil
			}

			return read, err
		}

		if st.done {
			return 0, io.EOF
		}

		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-st.changed:
		}
	}
}

func (r *flightReader) Close() error { return r.file.Close() }

// narFlightFor returns the running download of fileName, or starts one
// from the upstream named by record.
func (s *Store) narFlightFor(fileName string, record pullRecord, info *narinfo.NarInfo) (*narFlight, error) {
	s.narFlightsMu.Lock()
	defer s.narFlightsMu.Unlock()

	if f, ok := s.narFlights[fileName]; ok {
		return f, nil
	}

	if s.background.Err() != nil {
		return nil, errClosed
	}

	tmp, err := os.CreateTemp(s.tmpDir, "pull-*")
	if err != nil {
		return nil, err
	}

	f := &narFlight{fileName: fileName, info: info, path: tmp.Name(), contentLength: -1, changed: make(chan struct{})}
	s.narFlights[fileName] = f

	s.fetches.Add(1)
	s.metrics.inflight.WithLabelValues("nar").Inc()

	go func() {
		defer s.fetches.Done()
		defer s.metrics.inflight.WithLabelValues("nar").Dec()

		start := time.Now()
		err := s.downloadNAR(f, tmp, record)

		s.metrics.upstreamLatency.WithLabelValues(record.Upstream, "nar").Observe(time.Since(start).Seconds())

		evicted := errors.Is(err, errEvicted)
		if evicted {
			s.logger.Debug("pulled NAR not stored because its path was evicted", "nar_file", fileName)
			err = nil
		} else if err != nil {
			s.countUpstreamError(record.Upstream, fmt.Errorf("download NAR %q: %w", fileName, err))
		}

		s.narFlightsMu.Lock()
		delete(s.narFlights, fileName)
		s.narFlightsMu.Unlock()

		// Mark the flight done before the file goes, so a reader that
		// arrives late gets the download's error instead of a missing file.
		f.update(func() {
			f.done = true
			f.err = err
		})
		if evicted || err != nil {
			os.Remove(tmp.Name())
		}
	}()

	return f, nil
}

// downloadNAR copies the upstream file into tmp, checks it against the
// flight's narinfo and commits it. It closes tmp.
func (s *Store) downloadNAR(f *narFlight, tmp *os.File, record pullRecord) error {
	defer tmp.Close()

	up := s.upstreamByURL(record.Upstream)
	if up == nil {
		return fmt.Errorf("%w: upstream %q was removed", ErrUpstreamUnavailable, record.Upstream)
	}

	ctx, cancel := context.WithCancel(s.background)
	defer cancel()

	// The idle timer cancels a download that stalls, however long the
	// whole file takes.
	idle := time.AfterFunc(s.cfg.NARIdleTimeout, cancel)
	defer idle.Stop()

	body, contentLength, err := up.OpenNAR(ctx, record.URL)
	if err != nil {
		if ctx.Err() != nil && s.background.Err() == nil {
			return fmt.Errorf("%w: no response for %v: %w", context.DeadlineExceeded, s.cfg.NARIdleTimeout, err)
		}

		return upstreamNARError(err)
	}

	defer body.Close()

	limit := int64(s.cfg.MaxNARSize)

	switch {
	case f.info.FileSize > 0:
		limit = int64(f.info.FileSize)
	case contentLength >= 0:
		// Without FileSize the upstream's Content-Length is the size that
		// readers are promised. The HTTP client fails a shorter body.
		if contentLength > limit {
			return fmt.Errorf("%w: the upstream file has %d bytes, more than the limit of %d", ErrHashMismatch, contentLength, limit)
		}

		limit = contentLength
		f.update(func() { f.contentLength = contentLength })
	}

	buf := make([]byte, downloadBufferSize)

	var written int64

	for {
		n, readErr := body.Read(buf)
		if n > 0 {
			idle.Reset(s.cfg.NARIdleTimeout)

			if written+int64(n) > limit {
				return fmt.Errorf("%w: the upstream file is larger than %d bytes", ErrHashMismatch, limit)
			}

			if _, err := tmp.Write(buf[:n]); err != nil {
				return err
			}

			written += int64(n)
			f.update(func() { f.written = written })
		}

		if errors.Is(readErr, io.EOF) {
			break
		}

		if readErr != nil {
			if ctx.Err() != nil && s.background.Err() == nil {
				return fmt.Errorf("%w: no data for %v", context.DeadlineExceeded, s.cfg.NARIdleTimeout)
			}

			return fmt.Errorf("read NAR from %s: %w", record.URL, readErr)
		}
	}

	idle.Stop()

	return s.checkAndCommitPulled(ctx, f, tmp, record)
}

// checkAndCommitPulled measures a downloaded file, compares it with the
// narinfo, checks its archive format and moves it into the nar directory.
func (s *Store) checkAndCommitPulled(ctx context.Context, f *narFlight, tmp *os.File, record pullRecord) error {
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}

	measured, err := measureNAR(ctx, f.info.Compression, tmp, f.info)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrHashMismatch, err)
	}

	if err := tmp.Sync(); err != nil {
		return err
	}

	s.gcMu.RLock()
	defer s.gcMu.RUnlock()

	// Garbage collection may have removed the narinfo while the file was
	// downloading, and with it the pull record.
	if _, err := s.pullRecordOf(f.fileName); errors.Is(err, ErrNotFound) {
		return errEvicted
	} else if err != nil {
		return fmt.Errorf("commit NAR %q: %w", f.fileName, err)
	}

	final := filepath.Join(s.narDir, f.fileName)

	f.mu.Lock()
	err = os.Rename(tmp.Name(), final)
	if err == nil {
		f.path = final
	}
	f.mu.Unlock()

	if err != nil {
		return err
	}

	if err := syncDir(s.narDir); err != nil {
		return err
	}

	if err := s.storePulledRecord(f.fileName, record.HashPart, measured); err != nil {
		return err
	}

	s.pathsAdded(f.info.StorePath)

	s.logger.Info("pulled NAR", "store_path", f.info.StorePath, "nar_file", f.fileName, "file_size", measured.FileSize)

	return nil
}

// storePulledRecord stores the record of a downloaded NAR file, removes
// its pull record and adds FileHash and FileSize to the narinfo of
// hashPart when the upstream left them out.
func (s *Store) storePulledRecord(fileName, hashPart string, record narRecord) error {
	recordJSON, err := json.Marshal(record)
	if err != nil {
		return err
	}

	return s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(s.narRecordKey(fileName), recordJSON); err != nil {
			return err
		}

		if err := txn.Delete(s.pullKey(fileName)); err != nil {
			return err
		}

		item, err := txn.Get(s.narInfoKey(hashPart))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}

		if err != nil {
			return err
		}

		data, err := item.ValueCopy(nil)
		if err != nil {
			return err
		}

		info, err := narinfo.Parse(bytes.NewReader(data))
		if err != nil {
			return fmt.Errorf("read narinfo %q: stored narinfo is invalid: %w", hashPart, err)
		}

		if info.FileHash != nil && info.FileSize != 0 {
			return nil
		}

		info.FileHash = mustNix32Hash(record.FileHash)
		info.FileSize = record.FileSize

		return txn.Set(s.narInfoKey(hashPart), narinfo.Format(info))
	})
}

// pullRecordOf returns the pull record of a NAR file name, or an error
// wrapping ErrNotFound.
func (s *Store) pullRecordOf(fileName string) (pullRecord, error) {
	var record pullRecord

	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(s.pullKey(fileName))
		if err != nil {
			return err
		}

		return item.Value(func(value []byte) error { return json.Unmarshal(value, &record) })
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return pullRecord{}, fmt.Errorf("read pull record %q: %w", fileName, ErrNotFound)
	}

	if err != nil {
		return pullRecord{}, fmt.Errorf("read pull record %q: %w", fileName, err)
	}

	return record, nil
}

// upstreamByURL returns the configured upstream with base URL baseURL, or
// nil.
func (s *Store) upstreamByURL(baseURL string) *upstream.Upstream {
	for _, up := range s.currentSettings().upstreams {
		if up.URL() == baseURL {
			return up
		}
	}

	return nil
}
