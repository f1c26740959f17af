package protocol

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

// remoteSink is the NARSink of a worker's job. It sends path queries and
// NAR uploads to the node over the session.
type remoteSink struct {
	s   *workerSession
	job uint64
}

var (
	_ NARSink       = (*remoteSink)(nil)
	_ BuiltNotifier = (*remoteSink)(nil)
)

// OutputsBuilt notifies a node that accepts it that the job's outputs are
// built, and stops counting the job against the worker's slots while the
// upload goes on.
func (r *remoteSink) OutputsBuilt() {
	if !r.s.welcome.JobBuilt {
		return
	}
	r.s.mu.Lock()
	if r.s.jobs[r.job] != nil {
		r.s.uploading[r.job] = true
	}
	r.s.mu.Unlock()
	_ = r.s.conn.Write(r.s.ctx, &JobBuilt{Job: r.job})
}

// HasPath queries whether the node's cache contains storePath.
func (r *remoteSink) HasPath(ctx context.Context, storePath string) (bool, error) {
	have, err := r.s.queryNode(ctx, r.job, []string{storePath})
	if err != nil {
		return false, err
	}
	return len(have) == 1 && have[0] == storePath, nil
}

// Missing returns the paths of storePaths that the node's cache lacks,
// asking in batches of MaxQueryPaths.
func (r *remoteSink) Missing(ctx context.Context, storePaths []string) ([]string, error) {
	var missing []string
	for start := 0; start < len(storePaths); start += MaxQueryPaths {
		batch := storePaths[start:min(start+MaxQueryPaths, len(storePaths))]
		have, err := r.s.queryNode(ctx, r.job, batch)
		if err != nil {
			return nil, err
		}
		held := make(map[string]bool, len(have))
		for _, p := range have {
			held[p] = true
		}
		for _, p := range batch {
			if !held[p] {
				missing = append(missing, p)
			}
		}
	}
	return missing, nil
}

// PutNAR compresses the NAR read from nar with zstd into a spool file,
// then sends it from the offset the node names. A cut connection fails
// the upload. The node keeps what it received, so the next upload of the
// same compressed NAR, on this session or a later one, continues there.
func (r *remoteSink) PutNAR(ctx context.Context, info PathInfo, nar io.Reader) error {
	s := r.s
	spool, err := os.CreateTemp(s.cfg.SpoolDir, "gradient-nar-*.zst")
	if err != nil {
		return fmt.Errorf("upload %q: create spool file: %w", info.StorePath, err)
	}
	defer os.Remove(spool.Name())
	defer spool.Close()

	size, fileHash, err := compressNAR(ctx, spool, nar)
	if err != nil {
		return fmt.Errorf("upload %q: %w", info.StorePath, err)
	}

	s.mu.Lock()
	s.nextID++
	id := s.nextID
	offsetCh := make(chan *NAROffset, 1)
	storedCh := make(chan *NARStored, 1)
	s.offsets[id] = offsetCh
	s.stored[id] = storedCh
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.offsets, id)
		delete(s.stored, id)
		s.mu.Unlock()
	}()

	begin := &NARBegin{Upload: id, Job: r.job, Info: info, Compression: "zstd", FileSize: size, FileHash: fileHash}
	if err := s.conn.Write(s.ctx, begin); err != nil {
		return fmt.Errorf("upload %q: %w: %w", info.StorePath, ErrConnectionLost, err)
	}

	var offset *NAROffset
	select {
	case offset = <-offsetCh:
	case m := <-storedCh:
		return fmt.Errorf("upload %q: node: %s", info.StorePath, m.Error)
	case <-s.done:
		return fmt.Errorf("upload %q: %w", info.StorePath, ErrConnectionLost)
	case <-ctx.Done():
		return ctx.Err()
	}
	if offset.Have {
		return nil
	}
	if offset.Offset > size {
		return fmt.Errorf("upload %q: node asked for offset %d of a %d-byte file", info.StorePath, offset.Offset, size)
	}
	if offset.Offset > 0 {
		s.log.Info("resuming NAR upload", "store_path", info.StorePath, "offset", offset.Offset, "file_size", size)
	}

	if err := r.sendChunks(ctx, spool, id, offset.Offset, size); err != nil {
		return fmt.Errorf("upload %q: %w", info.StorePath, err)
	}

	select {
	case m := <-storedCh:
		if m.Error != "" {
			return fmt.Errorf("upload %q: node rejected the NAR: %s", info.StorePath, m.Error)
		}
		return nil
	case <-s.done:
		return fmt.Errorf("upload %q: %w", info.StorePath, ErrConnectionLost)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendChunks sends the spool file from offset to size in NARChunks.
func (r *remoteSink) sendChunks(ctx context.Context, spool *os.File, id, offset, size uint64) error {
	if _, err := spool.Seek(int64(offset), io.SeekStart); err != nil {
		return fmt.Errorf("read spool file: %w", err)
	}
	buf := make([]byte, MaxChunkSize)
	for offset < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, err := io.ReadFull(spool, buf[:min(uint64(len(buf)), size-offset)])
		if err != nil {
			return fmt.Errorf("read spool file: %w", err)
		}
		data := make([]byte, n)
		copy(data, buf[:n])
		if err := r.s.conn.Write(r.s.ctx, &NARChunk{Upload: id, Offset: offset, Data: data}); err != nil {
			return fmt.Errorf("%w: %w", ErrConnectionLost, err)
		}
		offset += uint64(n)
	}
	return nil
}

// compressNAR writes nar compressed with zstd to spool and returns the
// compressed size and SHA-256. One encoder goroutine at the default level
// makes the output the same for the same NAR and library version, so a
// resumed upload from another worker matches the bytes the node kept. The
// file hash catches a mismatch, which costs only a restart.
func compressNAR(ctx context.Context, spool *os.File, nar io.Reader) (uint64, string, error) {
	h := sha256.New()
	counter := &countWriter{}
	enc, err := zstd.NewWriter(io.MultiWriter(spool, h, counter), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, "", fmt.Errorf("compress NAR: %w", err)
	}
	if _, err := io.Copy(enc, contextReader{ctx: ctx, r: nar}); err != nil {
		enc.Close()
		return 0, "", fmt.Errorf("compress NAR: %w", err)
	}
	if err := enc.Close(); err != nil {
		return 0, "", fmt.Errorf("compress NAR: %w", err)
	}
	return counter.n, hex.EncodeToString(h.Sum(nil)), nil
}

type countWriter struct{ n uint64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += uint64(len(p))
	return len(p), nil
}

// contextReader stops a copy when ctx ends.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// queryNode returns the paths of the list that the node's cache contains.
func (s *workerSession) queryNode(ctx context.Context, job uint64, paths []string) ([]string, error) {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	ch := make(chan *PathAnswer, 1)
	s.queries[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.queries, id)
		s.mu.Unlock()
	}()

	if err := s.conn.Write(s.ctx, &PathQuery{ID: id, Job: job, Paths: paths}); err != nil {
		return nil, fmt.Errorf("query the node's cache: %w: %w", ErrConnectionLost, err)
	}
	select {
	case a := <-ch:
		if a.Error != "" {
			return nil, fmt.Errorf("query the node's cache: %w", errors.New(a.Error))
		}
		return a.Have, nil
	case <-s.done:
		return nil, fmt.Errorf("query the node's cache: %w", ErrConnectionLost)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
