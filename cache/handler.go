package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	cacheInfoContentType = "text/x-nix-cache-info"
	narContentType       = "application/x-nix-nar"
	logContentType       = "text/plain; charset=utf-8"
)

var (
	narInfoPathRe = regexp.MustCompile(`^([0-9a-df-np-sv-z]{32})\.narinfo$`)
	narPathRe     = regexp.MustCompile(`^nar/([0-9a-df-np-sv-z]{52}\.nar(\.xz|\.zst|\.bz2)?)$`)
	listingPathRe = regexp.MustCompile(`^([0-9a-df-np-sv-z]{32})\.ls$`)
)

// LogSource opens build logs for the log/ endpoint.
type LogSource interface {
	// OpenLog returns the build log of the derivation drvPath, an absolute
	// .drv store path. It returns an error wrapping ErrNotFound or
	// fs.ErrNotExist when there is no log. The caller closes the reader.
	OpenLog(ctx context.Context, drvPath string) (io.ReadCloser, error)
}

// HandlerOptions configures Store.Handler.
type HandlerOptions struct {
	// Authorize reports whether a request may upload. It is called for
	// every PUT before the body is read. When it is nil every upload is
	// rejected. Nix sends the credentials of its netrc file as HTTP
	// Basic auth.
	Authorize func(*http.Request) bool
	// Logs serves GET log/<drv>. When it is nil every log is not found.
	Logs LogSource
}

// Handler returns the HTTP handler of the Nix binary-cache protocol for
// the cache. Paths are relative to its mount point, so the caller strips
// the mount prefix first, for example with http.StripPrefix("/cache/main",
// h). It serves:
//
//	GET  nix-cache-info          Priority by client address
//	GET  <hash>.narinfo          HEAD too, ?json for JSON, pulled from upstreams
//	GET  <hash>.ls               NAR listing of a stored NAR
//	GET  nar/<file>              HEAD too, with Range support, pulled from upstreams
//	GET  log/<drv base name>     from opts.Logs
//	GET  realisations/<id>.doi   and build-trace-v2/<id>, as uploaded
//	PUT  nar/<file>              .nar, .nar.xz, .nar.zst or .nar.bz2, authorized
//	PUT  <hash>.narinfo          authorized, after its NAR
//	PUT  realisations/..., build-trace-v2/...   authorized
//
// Unknown paths and store paths that neither the cache nor an upstream
// holds get 404 with an empty body. A miss that an upstream failure may
// have caused gets 502, or 504 when an upstream timed out, so nix does not
// remember it as missing. Paths with empty, "." or ".." segments get 400.
func (s *Store) Handler(opts HandlerOptions) http.Handler {
	return &handler{store: s, opts: opts}
}

type handler struct {
	store *Store
	opts  HandlerOptions
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, "/")

	if !isCleanRelative(name) {
		httpError(w, http.StatusBadRequest, fmt.Sprintf("invalid path %q", r.URL.Path))
		return
	}

	switch r.Method {
	case http.MethodGet, http.MethodHead:
		h.serveRead(w, r, name)
	case http.MethodPut:
		h.serveUpload(w, r, name)
	default:
		w.Header().Set("Allow", "GET, HEAD, PUT")
		httpError(w, http.StatusMethodNotAllowed, fmt.Sprintf("method %s is not allowed", r.Method))
	}
}

func (h *handler) serveRead(w http.ResponseWriter, r *http.Request, name string) {
	switch {
	case name == "nix-cache-info":
		h.serveCacheInfo(w, r)
	case narInfoPathRe.MatchString(name):
		h.serveNarInfo(w, r, narInfoPathRe.FindStringSubmatch(name)[1])
	case narPathRe.MatchString(name):
		h.serveNAR(w, r, narPathRe.FindStringSubmatch(name)[1])
	case listingPathRe.MatchString(name):
		h.serveListing(w, r, listingPathRe.FindStringSubmatch(name)[1])
	case strings.HasPrefix(name, "log/"):
		h.serveLog(w, r, strings.TrimPrefix(name, "log/"))
	case isRealisationPath(name):
		h.serveRealisation(w, r, name)
	default:
		notFound(w)
	}
}

func (h *handler) serveCacheInfo(w http.ResponseWriter, r *http.Request) {
	priority := h.store.currentSettings().priorityFor(clientAddr(r, h.store.cfg.TrustedProxies))
	body := fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", h.store.cfg.StoreDir, priority)

	// The priority depends on the client, so a shared cache must not
	// hand one client's answer to another.
	w.Header().Set("Vary", "X-Forwarded-For")
	w.Header().Set("Cache-Control", "private")
	writeBody(w, r, cacheInfoContentType, []byte(body))
}

func (h *handler) serveNarInfo(w http.ResponseWriter, r *http.Request, hashPart string) {
	data, result, err := h.store.lookupNarInfo(r.Context(), hashPart)
	if err != nil {
		h.lookupError(w, r, "narinfo", err)
		return
	}

	h.store.metrics.requests.WithLabelValues("narinfo", result).Inc()

	if _, ok := r.URL.Query()["json"]; ok {
		h.serveNarInfoJSON(w, r, data)
		return
	}

	writeBody(w, r, narinfo.ContentType, data)
}

// lookupError answers a failed lookup: 404 for a true miss, 504 when an
// upstream timed out, 502 for another upstream failure and 500 for a
// local failure.
func (h *handler) lookupError(w http.ResponseWriter, r *http.Request, kind string, err error) {
	switch {
	case errors.Is(err, ErrNotFound):
		h.store.metrics.requests.WithLabelValues(kind, resultMiss).Inc()
		notFound(w)
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client is gone and reads no answer.
	case errors.Is(err, ErrUpstreamUnavailable), errors.Is(err, ErrHashMismatch), errors.Is(err, context.DeadlineExceeded):
		h.store.metrics.requests.WithLabelValues(kind, resultError).Inc()

		code := http.StatusBadGateway
		if errors.Is(err, context.DeadlineExceeded) {
			code = http.StatusGatewayTimeout
		}

		msg := "upstream caches failed, try again later"
		if errors.Is(err, errPeerFault) {
			msg = "fetching the path from mesh peers failed and no upstream cache has it, try again later"
		}

		httpError(w, code, msg)
	default:
		h.store.metrics.requests.WithLabelValues(kind, resultError).Inc()
		h.internalError(w, r, err)
	}
}

func (h *handler) serveNAR(w http.ResponseWriter, r *http.Request, fileName string) {
	f, err := os.Open(filepath.Join(h.store.narDir, fileName))
	if errors.Is(err, fs.ErrNotExist) {
		h.servePulledNAR(w, r, fileName)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	defer f.Close()

	h.store.metrics.requests.WithLabelValues("nar", resultHit).Inc()
	h.serveNARFile(w, r, f, "local")
}

// serveNARFile sends a complete NAR file, with Range support.
func (h *handler) serveNARFile(w http.ResponseWriter, r *http.Request, f *os.File, source string) {
	w.Header().Set("Content-Type", narContentType)

	counter := &countingResponseWriter{ResponseWriter: w}

	// Files in the nar directory never change once they are there, so
	// there is no modification time to offer for conditional requests.
	http.ServeContent(counter, r, "", time.Time{}, f)
	h.store.metrics.servedBytes.WithLabelValues(source).Add(float64(counter.n))
}

// countingResponseWriter counts the body bytes written through it.
type countingResponseWriter struct {
	http.ResponseWriter
	n int64
}

func (w *countingResponseWriter) Write(p []byte) (int, error) {
	n, err := w.ResponseWriter.Write(p)
	w.n += int64(n)

	return n, err
}

func (h *handler) serveLog(w http.ResponseWriter, r *http.Request, drvName string) {
	if h.opts.Logs == nil || !strings.HasSuffix(drvName, ".drv") || narinfo.CheckBaseName(drvName) != nil {
		notFound(w)
		return
	}

	drvPath := h.store.cfg.StoreDir + "/" + drvName

	log, err := h.opts.Logs.OpenLog(r.Context(), drvPath)
	if errors.Is(err, ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, fmt.Errorf("open log of %q: %w", drvPath, err))
		return
	}

	defer log.Close()

	w.Header().Set("Content-Type", logContentType)

	if r.Method == http.MethodHead {
		w.WriteHeader(http.StatusOK)
		return
	}

	if _, err := io.Copy(w, log); err != nil {
		h.store.logger.Warn("send build log failed", "drv_path", drvPath, "error", err)
	}
}

func (h *handler) internalError(w http.ResponseWriter, r *http.Request, err error) {
	h.store.logger.Error("binary cache request failed", "method", r.Method, "path", r.URL.Path, "error", err)
	httpError(w, http.StatusInternalServerError, "internal error, see the server log")
}

// isCleanRelative reports whether name is a relative slash-separated path
// without empty, "." or ".." segments, backslashes or NUL bytes.
func isCleanRelative(name string) bool {
	if name == "" {
		return true
	}

	if strings.ContainsAny(name, "\\\x00") {
		return false
	}

	for _, segment := range strings.Split(name, "/") {
		if segment == "" || segment == "." || segment == ".." {
			return false
		}
	}

	return true
}

// writeBody sends a complete small body, or only its headers for HEAD.
func writeBody(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)

	if r.Method != http.MethodHead {
		w.Write(body)
	}
}

// notFound sends 404 with an empty body, which nix reads as a missing
// file.
func notFound(w http.ResponseWriter) {
	w.Header().Set("Content-Length", "0")
	w.WriteHeader(http.StatusNotFound)
}

func httpError(w http.ResponseWriter, code int, message string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	fmt.Fprintln(w, message)
}

// ReadFrom keeps the sendfile path of the underlying writer.
func (w *countingResponseWriter) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err := rf.ReadFrom(r)
		w.n += n

		return n, err
	}

	return io.Copy(writerOnly{w}, r)
}

// writerOnly hides ReadFrom so io.Copy does not call it again.
type writerOnly struct{ io.Writer }
