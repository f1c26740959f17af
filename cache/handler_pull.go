package cache

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"strconv"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// servePulledNAR serves a NAR file that a pulled narinfo names and that is
// not downloaded yet. A GET starts the download, or joins the running one,
// and streams the file as it arrives. The response is aborted, never
// completed, when the download fails its checks. A Range request waits
// for the whole file. A HEAD starts no download.
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
		w.Header().Set("Content-Type", narContentType)

		if info.FileSize > 0 {
			w.Header().Set("Content-Length", strconv.FormatUint(info.FileSize, 10))
		}

		w.WriteHeader(http.StatusOK)

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

	h.streamFlight(w, r, flight, info)
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
func (h *handler) streamFlight(w http.ResponseWriter, r *http.Request, flight *narFlight, info *narinfo.NarInfo) {
	reader, err := flight.newReader(r.Context())
	if err != nil {
		h.lookupError(w, r, "nar", err)
		return
	}

	defer reader.Close()

	w.Header().Set("Content-Type", narContentType)

	// The download stops at FileSize bytes and fails on fewer, so the
	// response aborts when the file has another size. Without FileSize
	// the response is chunked.
	if info.FileSize > 0 {
		w.Header().Set("Content-Length", strconv.FormatUint(info.FileSize, 10))
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
