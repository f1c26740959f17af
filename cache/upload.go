package cache

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/narcompress"
)

// uploadError is an upload rejected because of the request, sent to the
// client with its status code and message.
type uploadError struct {
	code int
	msg  string
}

func (e *uploadError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &uploadError{code: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func (h *handler) serveUpload(w http.ResponseWriter, r *http.Request, name string) {
	if h.opts.Authorize == nil || !h.opts.Authorize(r) {
		h.store.logger.Info("upload rejected without valid credentials", "path", r.URL.Path, "remote_addr", r.RemoteAddr)
		w.Header().Set("WWW-Authenticate", `Basic realm="gradient cache `+h.store.cfg.Name+`"`)
		httpError(w, http.StatusUnauthorized, "upload requires a valid token, sent as the HTTP Basic password")
		return
	}

	if enc := r.Header.Get("Content-Encoding"); enc != "" && enc != "identity" {
		httpError(w, http.StatusUnsupportedMediaType, fmt.Sprintf("Content-Encoding %q is not supported, upload files as they are", enc))
		return
	}

	var err error

	switch {
	case narInfoPathRe.MatchString(name):
		err = h.store.putUploadedNarInfo(r.Context(), narInfoPathRe.FindStringSubmatch(name)[1], http.MaxBytesReader(w, r.Body, narinfo.MaxSize+1))
	case narPathRe.MatchString(name):
		err = h.store.putUploadedNAR(r.Context(), narPathRe.FindStringSubmatch(name)[1], http.MaxBytesReader(w, r.Body, h.store.cfg.MaxNARSize))
	case strings.HasPrefix(name, "nar/"):
		err = badRequest("invalid NAR file name %q: use nar/<nix32 SHA-256 of the file>.nar, .nar.xz or .nar.zst", name)
	case isRealisationPath(name):
		err = h.store.putRealisation(name, r.Body)
	case strings.HasPrefix(name, "log/"), strings.HasSuffix(name, ".ls"), strings.HasPrefix(name, "realisations/"), strings.HasPrefix(name, "debuginfo/"):
		err = &uploadError{code: http.StatusForbidden, msg: fmt.Sprintf("this cache does not accept uploads of %q, only NARs, narinfo and realisation files", name)}
	default:
		err = badRequest("invalid upload path %q: use <hash>.narinfo or nar/<file>", name)
	}

	h.finishUpload(w, r, err)
}

func (h *handler) finishUpload(w http.ResponseWriter, r *http.Request, err error) {
	var uploadErr *uploadError
	var maxBytesErr *http.MaxBytesError

	switch {
	case err == nil:
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
	case errors.As(err, &uploadErr):
		h.store.logger.Info("upload rejected", "path", r.URL.Path, "status", uploadErr.code, "error", err)
		httpError(w, uploadErr.code, uploadErr.msg)
	case errors.As(err, &maxBytesErr):
		httpError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxBytesErr.Limit))
	case errors.Is(err, context.Canceled):
		h.store.logger.Info("upload canceled", "path", r.URL.Path, "error", err)
	default:
		h.internalError(w, r, err)
	}
}

// putUploadedNAR stores an uploaded NAR file under incoming/, where it
// waits for its narinfo. A later upload of the same name replaces it.
func (s *Store) putUploadedNAR(ctx context.Context, fileName string, body io.Reader) error {
	f, err := os.CreateTemp(s.tmpDir, "upload-*")
	if err != nil {
		return err
	}

	defer os.Remove(f.Name())
	defer f.Close()

	if _, err := io.Copy(f, contextReader{ctx: ctx, r: body}); err != nil {
		return fmt.Errorf("receive NAR %q: %w", fileName, err)
	}

	if err := f.Close(); err != nil {
		return err
	}

	return os.Rename(f.Name(), filepath.Join(s.incomingDir, fileName))
}

// extensionCompression maps NAR file name extensions to the Compression
// field of a narinfo.
var extensionCompression = map[string]string{
	".nar":     "none",
	".nar.xz":  "xz",
	".nar.zst": "zstd",
	".nar.bz2": "bzip2",
}

// narExtension returns the extension of a NAR file name that matches
// narPathRe, such as ".nar.xz".
func narExtension(fileName string) string {
	return fileName[strings.Index(fileName, ".nar"):]
}

// putUploadedNarInfo checks an uploaded narinfo against its NAR, which must
// be uploaded before it, and stores both. Its signatures are kept but not
// checked, because the uploader is trusted by its token. NarHash, NarSize,
// FileHash and FileSize are recomputed from the NAR file.
func (s *Store) putUploadedNarInfo(ctx context.Context, hashPart string, body io.Reader) error {
	ni, err := narinfo.Parse(body)

	var maxBytesErr *http.MaxBytesError

	switch {
	case errors.As(err, &maxBytesErr), errors.Is(err, narinfo.ErrTooLarge):
		return &uploadError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("narinfo larger than %d bytes", narinfo.MaxSize)}
	case err != nil:
		return badRequest("invalid narinfo: %v", err)
	}

	fileName, err := s.checkUploadedNarInfo(hashPart, ni)
	if err != nil {
		return err
	}

	// This check only saves verifying a NAR that would be rejected. The
	// commit checks again under the path's lock.
	err = s.checkNewPath(ctx, ni)
	if errors.Is(err, errPathStored) {
		s.logger.Debug("uploaded path is already stored", "store_path", ni.StorePath)
		return nil
	}

	if err != nil {
		return uploadPathError(err)
	}

	claimed, err := s.claimUpload(fileName)
	if errors.Is(err, fs.ErrNotExist) {
		return s.reuseNAR(ctx, ni, fileName)
	}

	if err != nil {
		return err
	}

	defer os.Remove(claimed)

	record, err := s.verifyUploadedNAR(ctx, ni, claimed)
	if err != nil {
		return err
	}

	finalName := narFileName(record.FileHash, narExtension(fileName))
	ni.URL = "nar/" + finalName
	ni.FileHash = mustNix32Hash(record.FileHash)
	ni.FileSize = record.FileSize

	err = s.commit(ctx, ni, claimed, finalName, record)
	if errors.Is(err, errPathStored) {
		return nil
	}

	if err != nil {
		return uploadPathError(fmt.Errorf("store uploaded %q: %w", ni.StorePath, err))
	}

	s.logger.Info("stored uploaded path", "store_path", ni.StorePath, "nar_size", ni.NarSize, "file_size", ni.FileSize)

	return nil
}

// checkUploadedNarInfo checks the fields of an uploaded narinfo that depend
// neither on its NAR nor on the stored paths, and returns the NAR's file
// name.
func (s *Store) checkUploadedNarInfo(hashPart string, ni *narinfo.NarInfo) (string, error) {
	if err := s.checkStorePath(ni.StorePath); err != nil {
		return "", badRequest("narinfo field StorePath: %v", err)
	}

	if got := narinfo.HashPart(ni.StorePath); got != hashPart {
		return "", badRequest("narinfo field StorePath: %q does not match the uploaded name %s.narinfo", ni.StorePath, hashPart)
	}

	if ni.NarSize > uint64(s.cfg.MaxNARSize) {
		return "", &uploadError{code: http.StatusRequestEntityTooLarge, msg: fmt.Sprintf("narinfo field NarSize: %d exceeds the limit of %d bytes", ni.NarSize, s.cfg.MaxNARSize)}
	}

	match := narPathRe.FindStringSubmatch(ni.URL)
	if match == nil {
		return "", badRequest("narinfo field URL: invalid NAR file name %q: use nar/<nix32 SHA-256 of the file>.nar, .nar.xz or .nar.zst", ni.URL)
	}

	fileName := match[1]

	if want := extensionCompression[narExtension(fileName)]; ni.Compression != want {
		return "", badRequest("narinfo field Compression: %q does not match the file name %q, want %q", ni.Compression, fileName, want)
	}

	return fileName, nil
}

// uploadPathError turns the errors of checkNewPath into the responses to
// an upload: 409 for a conflict and 400 for a missing reference or a
// NarSize that differs from the stored path's.
func uploadPathError(err error) error {
	switch {
	case errors.Is(err, ErrConflict):
		return &uploadError{code: http.StatusConflict, msg: err.Error()}
	case errors.Is(err, ErrMissingReference):
		return badRequest("narinfo field References: %v", err)
	case errors.Is(err, ErrHashMismatch):
		return badRequest("narinfo field NarSize: %v", err)
	default:
		return err
	}
}

// missingReferences returns the references of ni other than ni itself
// that the cache does not hold, as absolute paths.
func (s *Store) missingReferences(ctx context.Context, ni *narinfo.NarInfo) ([]string, error) {
	self := filepath.Base(ni.StorePath)

	var refs []string

	for _, ref := range ni.References {
		if ref != self {
			refs = append(refs, s.cfg.StoreDir+"/"+ref)
		}
	}

	return s.Missing(ctx, refs)
}

// claimUpload moves an uploaded NAR from incoming/ to a private name in
// tmp/, so a concurrent upload of the same name cannot change it while it
// is checked, and renews its modification time so RemoveStaleUploads
// leaves it alone.
func (s *Store) claimUpload(fileName string) (string, error) {
	f, err := os.CreateTemp(s.tmpDir, "claim-*")
	if err != nil {
		return "", err
	}

	claimed := f.Name()
	f.Close()

	if err := os.Rename(filepath.Join(s.incomingDir, fileName), claimed); err != nil {
		os.Remove(claimed)
		return "", err
	}

	now := s.cfg.Clock.Now()
	if err := os.Chtimes(claimed, now, now); err != nil {
		os.Remove(claimed)
		return "", err
	}

	return claimed, nil
}

// reuseNAR stores ni when its NAR was not uploaded but the cache already
// holds a NAR of that name, which nix does when it finds the file with a
// HEAD request. The record of the file must match ni.
//
// NOTE: when two narinfo uploads name the same new NAR at once, the one
// that does not claim it may find it neither in incoming/ nor in nar/ yet,
// and is rejected. nix uploads each NAR before its narinfo, so this needs
// two paths with identical contents uploaded in parallel.
func (s *Store) reuseNAR(ctx context.Context, ni *narinfo.NarInfo, fileName string) error {
	s.gcMu.RLock()
	defer s.gcMu.RUnlock()

	unlock := s.lockPath(narinfo.HashPart(ni.StorePath))
	defer unlock()

	err := s.checkNewPath(ctx, ni)
	if errors.Is(err, errPathStored) {
		return nil
	}

	if err != nil {
		return uploadPathError(err)
	}

	record, err := s.narRecord(fileName)
	if errors.Is(err, badger.ErrKeyNotFound) {
		record, err = s.measureStoredNAR(ctx, ni, fileName)
	}

	if err != nil {
		return err
	}

	if err := compareRecord(ni, record); err != nil {
		return err
	}

	ni.FileHash = mustNix32Hash(record.FileHash)
	ni.FileSize = record.FileSize

	if err := s.storeNarInfo(ni, fileName, record); err != nil {
		return fmt.Errorf("store uploaded %q: %w", ni.StorePath, err)
	}

	s.logger.Info("stored uploaded path with an existing NAR", "store_path", ni.StorePath, "nar_file", fileName)

	return nil
}

// measureStoredNAR measures a file in the nar directory that has no
// record. A crash between moving a NAR into place and storing its
// narinfo leaves such a file, and HEAD reports it, so nix does not upload
// it again.
func (s *Store) measureStoredNAR(ctx context.Context, ni *narinfo.NarInfo, fileName string) (narRecord, error) {
	f, err := os.Open(filepath.Join(s.narDir, fileName))
	if errors.Is(err, fs.ErrNotExist) {
		return narRecord{}, badRequest("narinfo field URL: NAR %q was not uploaded, upload it before the narinfo", ni.URL)
	}

	if err != nil {
		return narRecord{}, err
	}

	defer f.Close()

	return measureNAR(ctx, extensionCompression[narExtension(fileName)], f, ni)
}

// verifyUploadedNAR decompresses the file at path with bounds, hashes both
// sides, checks the archive format and compares the result with ni. It syncs the file on success.
func (s *Store) verifyUploadedNAR(ctx context.Context, ni *narinfo.NarInfo, path string) (narRecord, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return narRecord{}, err
	}

	defer f.Close()

	record, err := measureNAR(ctx, ni.Compression, f, ni)
	if err != nil {
		return narRecord{}, err
	}

	if err := f.Sync(); err != nil {
		return narRecord{}, err
	}

	return record, nil
}

// measureNAR reads a NAR file compressed with compression and checks it
// against ni: first its sizes and hashes with compareRecord, then its
// archive format. A file that fails a check gets a 400 uploadError. It
// returns the record of the file.
func measureNAR(ctx context.Context, compression string, file io.ReadSeeker, ni *narinfo.NarInfo) (narRecord, error) {
	record, formatErr, err := scanNAR(ctx, compression, file, ni.NarSize)
	if err != nil {
		return narRecord{}, err
	}

	if err := compareRecord(ni, record); err != nil {
		return narRecord{}, err
	}

	if formatErr != nil {
		return narRecord{}, badRequest("NAR file: %v", formatErr)
	}

	return record, nil
}

// scanNAR reads a NAR file compressed with compression and returns its
// hashes and sizes, and in formatErr why the decompressed bytes are not a
// NAR archive. It decompresses at most narSize+1 bytes, so a NAR larger
// than narSize shows as narSize+1 bytes.
func scanNAR(ctx context.Context, compression string, file io.ReadSeeker, narSize uint64) (record narRecord, formatErr, err error) {
	fileHash := sha256.New()
	fileSize := &countingWriter{}
	fileTee := io.TeeReader(contextReader{ctx: ctx, r: file}, io.MultiWriter(fileHash, fileSize))

	// The decoder allocates the dictionary size named in each xz block
	// header, so the headers are checked before any decoding.
	if compression == "xz" {
		if err := narcompress.CheckXZ(file, narcompress.MaxWindow); err != nil {
			return narRecord{}, nil, badRequest("narinfo field Compression: cannot decompress the NAR file as xz: %v", err)
		}

		if _, err := file.Seek(0, io.SeekStart); err != nil {
			return narRecord{}, nil, err
		}
	}

	dec, err := narcompress.NewReader(compression, fileTee)
	if err != nil {
		return narRecord{}, nil, badRequest("narinfo field Compression: cannot decompress the NAR file as %s: %v", compression, err)
	}

	defer dec.Close()

	narHash := sha256.New()
	narCount := &countingWriter{}
	narTee := io.TeeReader(io.LimitReader(dec, int64(narSize)+1), io.MultiWriter(narHash, narCount))

	formatErr, err = checkNARStream(narTee)
	if err != nil {
		if ctx.Err() != nil {
			return narRecord{}, nil, ctx.Err()
		}

		return narRecord{}, nil, badRequest("narinfo field Compression: cannot decompress the NAR file as %s: %v", compression, err)
	}

	// Hash what the decompressor left unread, so FileHash covers the
	// whole file even if it has data after the compressed stream.
	if _, err := io.Copy(io.Discard, fileTee); err != nil {
		return narRecord{}, nil, err
	}

	record = narRecord{
		Compression: compression,
		NarHash:     formatSHA256(narHash),
		NarSize:     narCount.n,
		FileHash:    formatSHA256(fileHash),
		FileSize:    fileSize.n,
	}

	return record, formatErr, nil
}

// compareRecord checks the measured NAR against the fields of ni and
// returns a 400 error naming the first field that differs.
func compareRecord(ni *narinfo.NarInfo, record narRecord) error {
	if record.NarSize != ni.NarSize {
		return badRequest("narinfo field NarSize: %d does not match the uploaded NAR, which has %s bytes", ni.NarSize, sizeString(record.NarSize, ni.NarSize))
	}

	if got := formatNix32(ni.NarHash); got != record.NarHash {
		return badRequest("narinfo field NarHash: %s does not match the uploaded NAR, which hashes to %s", got, record.NarHash)
	}

	if ni.FileSize != 0 && ni.FileSize != record.FileSize {
		return badRequest("narinfo field FileSize: %d does not match the uploaded file of %d bytes", ni.FileSize, record.FileSize)
	}

	if ni.FileHash != nil {
		if ni.FileHash.Algo() != nixhash.SHA256 {
			return badRequest("narinfo field FileHash: only SHA-256 is supported, got %s", ni.FileHash.Algo())
		}

		if got := formatNix32(ni.FileHash); got != record.FileHash {
			return badRequest("narinfo field FileHash: %s does not match the uploaded file, which hashes to %s", got, record.FileHash)
		}
	}

	if record.Compression != ni.Compression {
		return badRequest("narinfo field Compression: %q does not match the stored file, compressed with %q", ni.Compression, record.Compression)
	}

	return nil
}

func formatNix32(h *nixhash.HashWithEncoding) string {
	return h.Format(nixhash.NixBase32, true)
}
