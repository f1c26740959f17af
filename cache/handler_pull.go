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
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

// servePulledNAR serves a NAR file that a pulled narinfo names and that is
// not downloaded yet. A GET starts the download, or joins the running one,
// and streams the file as it arrives. The response is aborted, never
// completed, when the download fails its checks. A Range request waits
// for the whole file. A HEAD starts no download but sends a HEAD request to the upstream.
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
	if err == nil && r.Header.Get("Range") != "" {
		st, err = flight.wait(ctx, 1<<62)
	}

	if err != nil {
		return
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

	h.streamFlight(w, r, flight, info, st.contentLength)
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

// streamFlight sends the file of a running download as it grows.
// contentLength is the upstream's Content-Length, or -1.
func (h *handler) streamFlight(w http.ResponseWriter, r *http.Request, flight *narFlight, info *narinfo.NarInfo, contentLength int64) {
	reader, err := flight.newReader(r.Context())
	if err != nil {
		h.lookupError(w, r, "nar", err)
		return
	}

	defer reader.Close()

	w.Header().Set("Content-Type", narContentType)

	// The download stops at FileSize bytes, or else at the upstream's
	// Content-Length, and fails on fewer, so the response aborts when the
	// file has another size. Without either the response is chunked.
	switch {
	case info.FileSize > 0:
		w.Header().Set("Content-Length", strconv.FormatUint(info.FileSize, 10))
	case contentLength >= 0:
		w.Header().Set("Content-Length", strconv.FormatInt(contentLength, 10))
	}

	w.WriteHeader(http.StatusOK)

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
