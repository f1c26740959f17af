package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/protocol"
)

// DefaultPeerTimeout is how long a fetch from the peers may go without
// receiving NAR bytes when Config.PeerTimeout is zero.
const DefaultPeerTimeout = 2 * time.Minute

// Peers are other nodes that the cache asks for a path after its own
// records and before its upstreams, and that it tells which paths it
// holds, such as the nodes of a mesh. Its methods are called
// concurrently.
type Peers interface {
	// FetchHashPart copies the store path whose hash part is hashPart,
	// and the references it lacks, from a peer into sink. It bounds its
	// own lookup, which should take a few hundred milliseconds at most.
	// It returns an error wrapping ErrNotFound when no peer serves the
	// path.
	FetchHashPart(ctx context.Context, hashPart string, sink protocol.NARSink) error
	// PathsAdded receives store paths after the cache stored them
	// together with their NAR files. It must not block for long.
	PathsAdded(storePaths ...string)
	// PathsRemoved receives store paths after garbage collection deleted
	// them. It must not block for long.
	PathsRemoved(storePaths ...string)
}

// SetPeers makes the cache consult p on a narinfo miss and tell it about
// added and removed paths. A nil p turns this off. It is safe to call
// while the cache serves requests.
func (s *Store) SetPeers(p Peers) {
	if p == nil {
		s.peers.Store(nil)
		return
	}

	s.peers.Store(&p)
}

func (s *Store) currentPeers() Peers {
	if p := s.peers.Load(); p != nil {
		return *p
	}

	return nil
}

// pathsAdded passes storePath to the peers, if any.
func (s *Store) pathsAdded(storePaths ...string) {
	if p := s.currentPeers(); p != nil && len(storePaths) > 0 {
		p.PathsAdded(storePaths...)
	}
}

// pathsRemoved passes the evicted storePaths to the peers, if any.
func (s *Store) pathsRemoved(storePaths ...string) {
	if p := s.currentPeers(); p != nil && len(storePaths) > 0 {
		p.PathsRemoved(storePaths...)
	}
}

// errPeerFault marks a peer fetch that failed for a reason other than a
// miss, such as a timeout. A miss of the upstreams is then not final.
var errPeerFault = errors.New("fetching from the peers failed")

// fetchFromPeers asks the peers for hashPart and returns its stored
// .narinfo file on success. Concurrent calls for one hash part share one
// fetch, which runs on the Store's background context and ends when it
// goes Config.PeerTimeout without receiving NAR bytes, so a large path
// on a slow link still arrives. It returns an error wrapping ErrNotFound
// when no peer serves the path, or errPeerFault when the fetch failed
// otherwise. Either way the caller goes on to the upstreams.
func (s *Store) fetchFromPeers(ctx context.Context, peers Peers, hashPart string) ([]byte, error) {
	ch := s.peerFlights.DoChan(hashPart, func() (any, error) {
		fetchCtx, cancel := context.WithCancelCause(s.background)
		defer cancel(nil)

		idle := s.cfg.PeerTimeout
		timer := time.AfterFunc(idle, func() {
			cancel(fmt.Errorf("no NAR bytes from the peers for %v: %w", idle, context.DeadlineExceeded))
		})
		defer timer.Stop()

		sink := &progressSink{NARSink: s, progress: func() { timer.Reset(idle) }}
		err := peers.FetchHashPart(fetchCtx, hashPart, sink)
		if cause := context.Cause(fetchCtx); err != nil && cause != nil {
			err = fmt.Errorf("%w (%w)", err, cause)
		}

		switch {
		case err == nil:
		case errors.Is(err, ErrNotFound):
			s.logger.Debug("no peer serves the path", "hash_part", hashPart)
			return nil, err
		default:
			s.logger.Warn("fetching a path from the peers failed", "hash_part", hashPart, "error", err)
			return nil, fmt.Errorf("fetch %q from the peers: %w: %w", hashPart, errPeerFault, err)
		}

		return s.localNarInfo(fetchCtx, hashPart)
	})

	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case result := <-ch:
		if result.Err != nil {
			return nil, result.Err
		}

		return result.Val.([]byte), nil
	}
}

// progressSink is a NARSink that calls progress whenever it reads NAR
// bytes, so that a fetch times out only when its transfer stalls.
type progressSink struct {
	protocol.NARSink
	progress func()
}

func (p *progressSink) PutNAR(ctx context.Context, info protocol.PathInfo, nar io.Reader) error {
	return p.NARSink.PutNAR(ctx, info, &progressReader{r: nar, progress: p.progress})
}

// progressReader calls progress after each read that returned bytes.
type progressReader struct {
	r        io.Reader
	progress func()
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	if n > 0 {
		p.progress()
	}
	return n, err
}

// OpenNAR opens the NAR file that a narinfo URL of this cache names, such
// as "nar/<file hash>.nar.zst", as stored, in the narinfo's Compression,
// and returns it with its size in bytes. The caller closes the file. It
// returns an error wrapping ErrNotFound when the file does not exist,
// such as for a pulled path whose NAR is not downloaded yet.
func (s *Store) OpenNAR(ctx context.Context, url string) (io.ReadCloser, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}

	fileName, ok := strings.CutPrefix(url, "nar/")
	if !ok || !narPathRe.MatchString(url) {
		return nil, 0, fmt.Errorf("open NAR %q: %w: not a NAR file URL of this cache", url, ErrNotFound)
	}

	f, err := os.Open(filepath.Join(s.narDir, fileName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("open NAR %q: %w", url, ErrNotFound)
	}

	if err != nil {
		return nil, 0, fmt.Errorf("open NAR %q: %w", url, err)
	}

	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("open NAR %q: %w", url, err)
	}

	return f, st.Size(), nil
}

// StorePaths calls fn with the store path of every narinfo whose NAR
// file the cache holds, in no particular order, such as to announce them
// at start. Paths pulled from an upstream whose NAR is not downloaded
// yet are left out. It stops at fn's first error and returns it.
func (s *Store) StorePaths(ctx context.Context, fn func(storePath string) error) error {
	var paths []string

	err := s.db.View(func(txn *badger.Txn) error {
		return s.scan(ctx, txn, "narinfo/", func(_ string, value []byte) error {
			storePath, fileName := narInfoLine(value, "StorePath: "), strings.TrimPrefix(narInfoLine(value, "URL: "), "nar/")

			if _, err := txn.Get(s.narRecordKey(fileName)); errors.Is(err, badger.ErrKeyNotFound) {
				return nil
			} else if err != nil {
				return err
			}

			paths = append(paths, storePath)

			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("list store paths: %w", err)
	}

	// fn runs outside the transaction, so it may take its time.
	for _, p := range paths {
		if err := fn(p); err != nil {
			return err
		}
	}

	return nil
}

// narInfoLine returns the value of the line that starts with key in a
// .narinfo file that the cache formatted, or "".
func narInfoLine(data []byte, key string) string {
	var line []byte

	if bytes.HasPrefix(data, []byte(key)) {
		line = data[len(key):]
	} else if i := bytes.Index(data, []byte("\n"+key)); i >= 0 {
		line = data[i+1+len(key):]
	} else {
		return ""
	}

	if end := bytes.IndexByte(line, '\n'); end >= 0 {
		line = line[:end]
	}

	return string(line)
}
