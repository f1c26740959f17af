package cache

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/protocol"
)

// narRecord describes a NAR file in the nar directory, so a narinfo that
// names an existing file can be checked without reading the file.
type narRecord struct {
	Compression string `json:"compression"`
	NarHash     string `json:"nar_hash"`
	NarSize     uint64 `json:"nar_size"`
	FileHash    string `json:"file_hash"`
	FileSize    uint64 `json:"file_size"`
}

func (s *Store) narRecordKey(fileName string) []byte {
	return []byte(s.keyPrefix + "nar/" + fileName)
}

// PutNAR stores the store path described by info, reading its
// uncompressed NAR serialisation from nar and compressing it with zstd.
// It reads at most info.NarSize+1 bytes and never holds the whole NAR in
// memory. The narinfo becomes visible only after the NAR file is synced
// to disk. Cancelling ctx stops the copy and returns ctx's error.
//
// A store path never changes once stored. When the cache holds the path
// with the same NarHash, PutNAR returns nil without reading nar, and with
// another NarHash it returns an error wrapping ErrConflict. Every
// reference but the path itself must be in the cache already, or PutNAR
// returns an error wrapping ErrMissingReference that names the missing
// ones. When the bytes do not match info.NarHash and info.NarSize it
// returns an error wrapping ErrHashMismatch, and when they are not a NAR
// archive, one wrapping ErrInvalidNAR. After any error nothing is stored.
func (s *Store) PutNAR(ctx context.Context, info protocol.PathInfo, nar io.Reader) error {
	ni, err := s.narInfoFromPathInfo(info)
	if err != nil {
		return fmt.Errorf("put NAR %q: %w", info.StorePath, err)
	}

	// This check only saves reading a NAR that would be rejected. The
	// commit checks again under the path's lock.
	err = s.checkNewPath(ctx, ni)
	if errors.Is(err, errPathStored) {
		return nil
	}

	if err != nil {
		return fmt.Errorf("put NAR %q: %w", info.StorePath, err)
	}

	tmp, record, err := s.compressNAR(ctx, ni, nar)
	if err != nil {
		return fmt.Errorf("put NAR %q: %w", info.StorePath, err)
	}

	fileName := narFileName(record.FileHash, ".nar.zst")
	ni.URL = "nar/" + fileName
	ni.Compression = "zstd"
	ni.FileHash = mustNix32Hash(record.FileHash)
	ni.FileSize = record.FileSize

	err = s.commit(ctx, ni, tmp, fileName, record)
	if errors.Is(err, errPathStored) {
		return nil
	}

	if err != nil {
		return fmt.Errorf("put NAR %q: %w", info.StorePath, err)
	}

	s.logger.Debug("stored path", "store_path", ni.StorePath, "nar_size", ni.NarSize, "file_size", ni.FileSize)

	return nil
}

// narInfoFromPathInfo checks info and converts it to a narinfo without
// URL and file fields, with the signatures of info and not yet the
// cache's own.
func (s *Store) narInfoFromPathInfo(info protocol.PathInfo) (*narinfo.NarInfo, error) {
	if err := s.checkStorePath(info.StorePath); err != nil {
		return nil, &narinfo.FieldError{Field: "StorePath", Err: err}
	}

	narHash, err := narinfo.ParseHash(info.NarHash)
	if err != nil || narHash.Algo() != nixhash.SHA256 {
		return nil, &narinfo.FieldError{Field: "NarHash", Err: fmt.Errorf("%q is not a SHA-256 hash", info.NarHash)}
	}

	if info.NarSize == 0 {
		return nil, &narinfo.FieldError{Field: "NarSize", Err: errors.New("is zero")}
	}

	if info.NarSize > uint64(s.cfg.MaxNARSize) {
		return nil, fmt.Errorf("%w: NarSize %d exceeds the limit of %d bytes", ErrTooLarge, info.NarSize, s.cfg.MaxNARSize)
	}

	ni := &narinfo.NarInfo{
		StorePath: info.StorePath,
		NarHash:   narHash,
		NarSize:   info.NarSize,
		CA:        info.CA,
	}

	for _, ref := range info.References {
		if err := s.checkStorePath(ref); err != nil {
			return nil, &narinfo.FieldError{Field: "References", Err: err}
		}

		ni.References = append(ni.References, path.Base(ref))
	}

	if info.Deriver != "" {
		if err := s.checkStorePath(info.Deriver); err != nil {
			return nil, &narinfo.FieldError{Field: "Deriver", Err: err}
		}

		ni.Deriver = path.Base(info.Deriver)
	}

	for _, text := range info.Signatures {
		sig, err := signature.ParseSignature(text)
		if err != nil {
			return nil, &narinfo.FieldError{Field: "Sig", Err: err}
		}

		ni.Signatures = append(ni.Signatures, sig)
	}

	return ni, nil
}

// compressNAR streams nar into a zstd-compressed temporary file while
// hashing both sides and checking its archive format, and checks the NAR
// against ni. On success the file
// is synced and closed and the caller owns it.
func (s *Store) compressNAR(ctx context.Context, ni *narinfo.NarInfo, nar io.Reader) (tmp string, record narRecord, err error) {
	f, err := os.CreateTemp(s.tmpDir, "put-*.nar.zst")
	if err != nil {
		return "", narRecord{}, err
	}

	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	fileHash := sha256.New()
	fileSize := &countingWriter{}

	enc, err := zstd.NewWriter(io.MultiWriter(f, fileHash, fileSize), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return "", narRecord{}, err
	}

	narHash := sha256.New()
	narSize := &countingWriter{}
	limited := io.LimitReader(contextReader{ctx: ctx, r: nar}, int64(ni.NarSize)+1)

	formatErr, err := checkNARStream(io.TeeReader(limited, io.MultiWriter(enc, narHash, narSize)))
	if err != nil {
		enc.Close()
		return "", narRecord{}, fmt.Errorf("read NAR: %w", err)
	}

	if err := enc.Close(); err != nil {
		return "", narRecord{}, fmt.Errorf("compress NAR: %w", err)
	}

	// A NAR that is not the one described is reported as such before
	// its format, because that is the more likely fault.
	if err := checkNAR(ni, narHash, narSize.n); err != nil {
		return "", narRecord{}, err
	}

	if formatErr != nil {
		return "", narRecord{}, formatErr
	}

	if err := f.Sync(); err != nil {
		return "", narRecord{}, err
	}

	if err := f.Close(); err != nil {
		return "", narRecord{}, err
	}

	record = narRecord{
		Compression: "zstd",
		NarHash:     formatSHA256(narHash),
		NarSize:     narSize.n,
		FileHash:    formatSHA256(fileHash),
		FileSize:    fileSize.n,
	}

	return f.Name(), record, nil
}

// checkNAR compares the hash and size of a NAR as read with ni.
func checkNAR(ni *narinfo.NarInfo, narHash hash.Hash, narSize uint64) error {
	if narSize != ni.NarSize {
		return fmt.Errorf("%w: NarSize is %d but the NAR has %s bytes", ErrHashMismatch, ni.NarSize, sizeString(narSize, ni.NarSize))
	}

	got := formatSHA256(narHash)
	if want := ni.NarHash.Format(nixhash.NixBase32, true); got != want {
		return fmt.Errorf("%w: NarHash is %s but the NAR hashes to %s", ErrHashMismatch, want, got)
	}

	return nil
}

// sizeString formats a size read through a reader limited to limit+1
// bytes, where limit+1 means "more than limit".
func sizeString(n, limit uint64) string {
	if n > limit {
		return fmt.Sprintf("more than %d", limit)
	}

	return fmt.Sprint(n)
}

// commit moves the synced file tmp to the nar directory as fileName, then
// signs ni and stores it together with record. The order makes sure a
// stored narinfo never names a missing file, even after a crash. It first
// checks ni with checkNewPath under the path's lock, and removes tmp and
// returns that error when ni may not be stored.
func (s *Store) commit(ctx context.Context, ni *narinfo.NarInfo, tmp, fileName string, record narRecord) error {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()

	unlock := s.lockPath(narinfo.HashPart(ni.StorePath))
	defer unlock()

	if err := s.checkNewPath(ctx, ni); err != nil {
		os.Remove(tmp)
		return err
	}

	if err := os.Rename(tmp, filepath.Join(s.narDir, fileName)); err != nil {
		os.Remove(tmp)
		return err
	}

	if err := syncDir(s.narDir); err != nil {
		return err
	}

	return s.storeNarInfo(ni, fileName, record)
}

// storeNarInfo signs ni and stores it with the record of its NAR file.
// The caller holds gcMu for reading from before it checked the file, and
// the lock of ni's path from before it called checkNewPath.
func (s *Store) storeNarInfo(ni *narinfo.NarInfo, fileName string, record narRecord) error {
	if err := narinfo.Sign(ni, s.key); err != nil {
		return err
	}

	recordJSON, err := json.Marshal(record)
	if err != nil {
		return err
	}

	hashPart := narinfo.HashPart(ni.StorePath)

	meta, err := json.Marshal(pathMeta{Origin: originUpload, LastUsed: s.cfg.Clock.Now().Unix()})
	if err != nil {
		return err
	}

	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(s.narRecordKey(fileName), recordJSON); err != nil {
			return err
		}

		// An uploaded file replaces a download that has not started.
		if err := txn.Delete(s.pullKey(fileName)); err != nil {
			return err
		}

		if err := txn.Set(s.metaKey(hashPart), meta); err != nil {
			return err
		}

		return txn.Set(s.narInfoKey(hashPart), narinfo.Format(ni))
	})
	if err != nil {
		return fmt.Errorf("write narinfo %q: %w", hashPart, err)
	}

	s.pathsAdded(ni.StorePath)

	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}

	defer d.Close()

	return d.Sync()
}

// narFileName returns "<nix32 digest><ext>" for a file hash written as
// "sha256:<nix32 digest>", the name nix gives the NARs it uploads.
func narFileName(fileHash, ext string) string {
	return fileHash[len("sha256:"):] + ext
}

func formatSHA256(h hash.Hash) string {
	return "sha256:" + nixbase32.EncodeToString(h.Sum(nil))
}

func mustNix32Hash(s string) *nixhash.HashWithEncoding {
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		panic(fmt.Sprintf("parse hash %q formatted by the cache: %v", s, err))
	}

	return h
}

type countingWriter struct{ n uint64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += uint64(len(p))
	return len(p), nil
}

// contextReader fails reads once ctx is done, so a copy from a reader
// that does not watch ctx still stops.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (r contextReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}

	return r.r.Read(p)
}
