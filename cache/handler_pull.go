package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

// servePulledNAR serves a NAR file that a pulled narinfo names and that is
// not downloaded yet. A GET starts the download, or joins the running one,
// and streams the file as it arrives. The response is aborted, never
// completed, when the download fails its checks. A Range request for one
// range that reaches the end of the file, such as the "bytes=N-" that nix
// sends to resume a cut download, streams that part as it arrives when the
// file's size is known. Other Range requests wait for the whole file. A
// HEAD starts no download but sends a HEAD request to the upstream.
func (h *handler) servePulledNAR(w http.ResponseWriter, r *http.Request, fileName string) {
	ctx := r.Context()

	record, err := h.store.pullRecordOf(fileName)
	if err != nil {
		h.lookupError(w, r, "nar", err)
		return
	}

	info, err := h.store.NarInfo(ctx, record.HashPart)
	if err != nil {
		h.lookupError(w, r, "nar", err)
		return
	}

	if r.Method == http.MethodHead {
		h.headPulledNAR(w, r, record, info)
		return
	}

	flight, err := h.store.narFlightFor(fileName, record, info)
	if err != nil {
		h.internalError(w, r, err)
		return
	}

	// Wait for the first byte, so a download that fails at once gets an
	// error status instead of an aborted 200.
	st, err := flight.wait(ctx, 1)
	if err != nil {
		return
	}

	size := pulledNARSize(info, st.contentLength)

	if header := r.Header.Get("Range"); header != "" && !st.done {
		start, ok := rangeToEnd(header, size)
		if ok && r.Header.Get("If-Range") == "" {
			h.streamFlight(w, r, flight, size, start)
			return
		}

		// The checks of the download end with its last byte, so only a
		// range that holds the last byte can be aborted when they fail.
		if st, err = flight.wait(ctx, 1<<62); err != nil {
			return
		}
	}

	if st.err != nil {
		h.lookupError(w, r, "nar", st.err)
		return
	}

	if st.done {
		h.store.metrics.requests.WithLabelValues("nar", resultPulled).Inc()
		h.serveCommittedNAR(w, r, st.path)
		return
	}

	h.streamFlight(w, r, flight, size, -1)
}

// pulledNARSize returns the size of a pulled NAR file: the narinfo's
// FileSize, or else the upstream's Content-Length, or -1 when neither is
// known.
func pulledNARSize(info *narinfo.NarInfo, contentLength int64) int64 {
	if info.FileSize > 0 {
		return int64(info.FileSize)
	}

	return contentLength
}

// rangeToEnd parses a Range header that names one byte range reaching the
// last byte of a file of size bytes: "bytes=N-", "bytes=N-M" with
// M >= size-1, or the suffix "bytes=-K". It returns the offset of the
// range's first byte. It reports false for other headers, for an unknown
// size (-1) and for a range that starts at or past the end.
func rangeToEnd(header string, size int64) (int64, bool) {
	spec, ok := strings.CutPrefix(header, "bytes=")
	if !ok || size <= 0 {
		return 0, false
	}

	first, last, ok := strings.Cut(spec, "-")
	if !ok {
		return 0, false
	}

	// Only spaces and tabs are trimmed, as http.ServeContent trims them.
	first, last = strings.Trim(first, " \t"), strings.Trim(last, " \t")

	if first == "" {
		suffix, ok := parseDigits(last)
		if !ok || suffix == 0 {
			return 0, false
		}

		return max(size-suffix, 0), true
	}

	start, ok := parseDigits(first)
	if !ok || start >= size {
		return 0, false
	}

	if last != "" {
		end, ok := parseDigits(last)
		if !ok || end < size-1 {
			return 0, false
		}
	}

	return start, true
}

// parseDigits parses a non-empty string of ASCII digits that fits an int64.
func parseDigits(s string) (int64, bool) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, false
	}

	n, err := strconv.ParseInt(s, 10, 64)

	return n, err == nil
}

// headPulledNAR handles HEAD for a NAR file that is not downloaded yet. It
// sends a HEAD request to the upstream within Config.UpstreamBudget, so
// the status is the one a GET would get at the start of its download:
// 404 when the upstream does not hold the file, 504 when it timed out,
// 502 for another upstream failure, and 200 otherwise. A running download
// of the same file is not consulted.
//
// NOTE: an upstream that rejects HEAD (405) gets 502 here although a GET
// may succeed. Static file servers and S3 accept HEAD.
func (h *handler) headPulledNAR(w http.ResponseWriter, r *http.Request, record pullRecord, info *narinfo.NarInfo) {
	up := h.store.upstreamByURL(record.Upstream)
	if up == nil {
		h.lookupError(w, r, "nar", fmt.Errorf("%w: upstream %q was removed", ErrUpstreamUnavailable, record.Upstream))
		return
	}

	ctx, cancel := context.WithTimeout(r.Context(), h.store.cfg.UpstreamBudget)
	defer cancel()

	start := time.Now()
	length, err := up.StatNAR(ctx, record.URL)

	h.store.metrics.upstreamLatency.WithLabelValues(record.Upstream, "nar_head").Observe(time.Since(start).Seconds())

	switch {
	case err != nil:
	case info.FileSize > 0 && length >= 0 && uint64(length) != info.FileSize:
		err = fmt.Errorf("%w: the upstream file has %d bytes, the narinfo's FileSize is %d", ErrHashMismatch, length, info.FileSize)
	case info.FileSize == 0 && length > int64(h.store.cfg.MaxNARSize):
		err = fmt.Errorf("%w: the upstream file has %d bytes, more than the limit of %d", ErrHashMismatch, length, h.store.cfg.MaxNARSize)
	}

	if err != nil {
		err = upstreamNARError(err)
		if !errors.Is(err, ErrNotFound) {
			h.store.countUpstreamError(record.Upstream, fmt.Errorf("head NAR %q: %w", record.URL, err))
		}

		h.lookupError(w, r, "nar", err)

		return
	}

	w.Header().Set("Content-Type", narContentType)
	w.Header().Set("Accept-Ranges", "bytes")

	switch {
	case info.FileSize > 0:
		w.Header().Set("Content-Length", strconv.FormatUint(info.FileSize, 10))
	case length >= 0:
		w.Header().Set("Content-Length", strconv.FormatInt(length, 10))
	}

	w.WriteHeader(http.StatusOK)
}

// upstreamNARError maps an error of a NAR request to an upstream onto the
// errors that lookupError turns into statuses: ErrNotFound when the upstream does not
// hold the file, context.DeadlineExceeded when it timed out, and
// ErrUpstreamUnavailable for other failures.
func upstreamNARError(err error) error {
	var netErr net.Error

	switch {
	case errors.Is(err, ErrNotFound), errors.Is(err, ErrUpstreamUnavailable), errors.Is(err, ErrHashMismatch),
		errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, upstream.ErrNotFound):
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("%w: %w", context.DeadlineExceeded, err)
	default:
		return fmt.Errorf("%w: %w", ErrUpstreamUnavailable, err)
	}
}

// serveCommittedNAR serves the file of a finished download. A download
// whose path was evicted meanwhile left no file.
func (h *handler) serveCommittedNAR(w http.ResponseWriter, r *http.Request, path string) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	defer f.Close()

	h.serveNARFile(w, r, f, "upstream")
}

// streamFlight sends the file of a running download as it grows: all of
// it with 200 when start is -1, or else with 206 from byte start to the
// end. size is the file's size from pulledNARSize, which a range needs.
func (h *handler) streamFlight(w http.ResponseWriter, r *http.Request, flight *narFlight, size, start int64) {
	reader, err := flight.newReader(r.Context())
	if err != nil {
		h.lookupError(w, r, "nar", err)
		return
	}

	defer reader.Close()

	w.Header().Set("Content-Type", narContentType)

	// Nix resumes a cut download with a Range request only when the cut
	// response had this header (src/libstore/filetransfer.cc in Nix 2.8,
	// current Nix and Lix).
	w.Header().Set("Accept-Ranges", "bytes")

	// The download stops at FileSize bytes, or else at the upstream's
	// Content-Length, and fails on fewer, so the response aborts when the
	// file has another size. Without either the response is chunked.
	status := http.StatusOK

	switch {
	case start >= 0:
		reader.offset = start
		status = http.StatusPartialContent

		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, size-1, size))
		w.Header().Set("Content-Length", strconv.FormatInt(size-start, 10))
	case size >= 0:
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}

	w.WriteHeader(status)

	n, err := io.Copy(flushWriter{w}, reader)
	h.store.metrics.servedBytes.WithLabelValues("upstream").Add(float64(n))

	if err != nil {
		if !errors.Is(err, context.Canceled) {
			h.store.logger.Warn("pulled NAR aborted", "nar_file", flight.fileName, "sent", n, "error", err)
		}

		// Aborting the connection keeps a chunked response from ending
		// as a complete, short one.
		panic(http.ErrAbortHandler)
	}
	h.store.metrics.requests.WithLabelValues("nar", resultPulled).Inc()
}

// flushWriter flushes after every write, so the client receives each part
// of the file as soon as the download has it.
type flushWriter struct{ w http.ResponseWriter }

func (f flushWriter) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		http.NewResponseController(f.w).Flush()
	}

	return n, err
}
