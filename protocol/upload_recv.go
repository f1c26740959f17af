package protocol

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/klauspost/compress/zstd"
)

// incomingUpload is a NAR upload that a session receives.
type incomingUpload struct {
	begin NARBegin
	sink  NARSink
	file  *os.File
	// path is the partial file; partial is set when path is the
	// resumable file of the store path and file hash, unset for a
	// private file used while another session writes that one.
	path    string
	partial bool
	offset  uint64
}

// partialPath returns the file that keeps the upload of one compressed
// NAR of a store path between connections.
func (h *Hub) partialPath(b *NARBegin) string {
	sum := sha256.Sum256([]byte(b.Info.StorePath + "\n" + b.FileHash + "\n" + strconv.FormatUint(b.FileSize, 10)))
	return filepath.Join(h.cfg.UploadDir, hex.EncodeToString(sum[:16])+".nar.zst.part")
}

// claimPartial marks the partial file of b as written by one session and
// reports whether it was free.
func (h *Hub) claimPartial(path string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.partials[path] {
		return false
	}
	h.partials[path] = true
	return true
}

// releasePartial closes an upload's file. A resumable partial file stays
// on disk for the next NARBegin of the same NAR, a private one is removed.
func (h *Hub) releasePartial(u *incomingUpload) {
	u.file.Close()
	if !u.partial {
		os.Remove(u.path)
		return
	}
	h.mu.Lock()
	delete(h.partials, u.path)
	h.mu.Unlock()
}

// beginUpload answers a NARBegin with the offset to continue at: what a
// partial file from a cut upload holds, or 0. It answers Have when the
// sink holds the path already.
func (s *session) beginUpload(ctx context.Context, b *NARBegin) error {
	s.mu.Lock()
	_, open := s.uploads[b.Upload]
	s.mu.Unlock()
	if open {
		return fmt.Errorf("upload %d is already open", b.Upload)
	}

	sink := s.sinkFor(b.Job)
	has, err := sink.HasPath(ctx, b.Info.StorePath)
	if err != nil {
		s.reply(&NARStored{Upload: b.Upload, Error: fmt.Sprintf("look up %s: %v", b.Info.StorePath, err)})
		return nil
	}
	if has {
		s.reply(&NAROffset{Upload: b.Upload, Have: true})
		return nil
	}

	u := &incomingUpload{begin: *b, sink: sink, path: s.hub.partialPath(b), partial: true}
	if !s.hub.claimPartial(u.path) {
		// Another session uploads the same NAR, such as two evaluating
		// workers that share a .drv: this one gets a file of its own.
		u.path = fmt.Sprintf("%s.%p.%d", u.path, s, b.Upload)
		u.partial = false
	}
	u.file, err = os.OpenFile(u.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		if u.partial {
			s.hub.mu.Lock()
			delete(s.hub.partials, u.path)
			s.hub.mu.Unlock()
		}
		s.reply(&NARStored{Upload: b.Upload, Error: fmt.Sprintf("open upload file: %v", err)})
		return nil
	}
	st, err := u.file.Stat()
	if err == nil && uint64(st.Size()) <= b.FileSize {
		u.offset = uint64(st.Size())
	} else {
		err = u.file.Truncate(0)
	}
	if err == nil {
		_, err = u.file.Seek(int64(u.offset), io.SeekStart)
	}
	if err != nil {
		s.hub.releasePartial(u)
		s.reply(&NARStored{Upload: b.Upload, Error: fmt.Sprintf("open upload file: %v", err)})
		return nil
	}

	if u.offset > 0 {
		s.log.Info("resuming NAR upload", "store_path", b.Info.StorePath, "offset", u.offset, "file_size", b.FileSize)
	}
	s.reply(&NAROffset{Upload: b.Upload, Offset: u.offset})
	if u.offset == b.FileSize {
		go s.finishUpload(ctx, u)
		return nil
	}
	s.mu.Lock()
	s.uploads[b.Upload] = u
	s.mu.Unlock()
	return nil
}

// writeChunk appends a chunk to its upload's file, and stores the NAR once
// the last chunk arrived. A chunk out of order is a protocol violation.
func (s *session) writeChunk(ctx context.Context, c *NARChunk) error {
	s.mu.Lock()
	u := s.uploads[c.Upload]
	s.mu.Unlock()
	if u == nil {
		return fmt.Errorf("chunk for upload %d, which is not open", c.Upload)
	}
	if c.Offset != u.offset {
		return fmt.Errorf("chunk of upload %d at offset %d, expected %d", c.Upload, c.Offset, u.offset)
	}
	if u.offset+uint64(len(c.Data)) > u.begin.FileSize {
		return fmt.Errorf("chunk of upload %d ends after file_size %d", c.Upload, u.begin.FileSize)
	}

	if _, err := u.file.Write(c.Data); err != nil {
		s.mu.Lock()
		delete(s.uploads, c.Upload)
		s.mu.Unlock()
		s.hub.releasePartial(u)
		s.reply(&NARStored{Upload: c.Upload, Error: fmt.Sprintf("write upload file: %v", err)})
		return nil
	}
	u.offset += uint64(len(c.Data))
	s.hub.bytesReceived.Add(uint64(len(c.Data)))

	if u.offset == u.begin.FileSize {
		s.mu.Lock()
		delete(s.uploads, c.Upload)
		s.mu.Unlock()
		go s.finishUpload(ctx, u)
	}
	return nil
}

// finishUpload checks the complete compressed NAR against its file hash,
// decompresses it into the sink, which checks NarHash and NarSize, and
// tells the worker the outcome. The partial file is removed unless ctx
// ended, which leaves it for a resume.
func (s *session) finishUpload(ctx context.Context, u *incomingUpload) {
	err := storeUpload(ctx, u)
	if ctx.Err() == nil || err == nil {
		os.Remove(u.path)
	}
	s.hub.releasePartial(u)

	answer := &NARStored{Upload: u.begin.Upload}
	if err != nil {
		s.log.Warn("NAR upload rejected", "store_path", u.begin.Info.StorePath, "err", err)
		answer.Error = err.Error()
	} else {
		s.log.Debug("NAR upload stored", "store_path", u.begin.Info.StorePath, "file_size", u.begin.FileSize)
	}
	s.reply(answer)
}

// errFileHash is returned when an upload's bytes do not match its
// NARBegin.FileHash.
var errFileHash = errors.New("compressed NAR does not match file_hash")

func storeUpload(ctx context.Context, u *incomingUpload) error {
	if _, err := u.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read upload file: %w", err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, u.file); err != nil {
		return fmt.Errorf("read upload file: %w", err)
	}
	if hex.EncodeToString(h.Sum(nil)) != u.begin.FileHash {
		return fmt.Errorf("store %s: %w", u.begin.Info.StorePath, errFileHash)
	}

	if _, err := u.file.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("read upload file: %w", err)
	}
	// The sink reads at most NarSize+1 bytes, which bounds what a
	// compression bomb can expand to; the window limit bounds memory.
	dec, err := zstd.NewReader(u.file, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(128<<20))
	if err != nil {
		return fmt.Errorf("decompress %s: %w", u.begin.Info.StorePath, err)
	}
	defer dec.Close()
	// A worker cannot vouch for signatures: the node signs with its own
	// key.
	info := u.begin.Info
	info.Signatures = nil
	return u.sink.PutNAR(ctx, info, dec)
}
