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
	narPathRe     = regexp.MustCompile(`^nar/([0-9a-df-np-sv-z]{52}\.nar(\.xz|\.zst)?)$`)
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
//	GET  nix-cache-info
//	GET  <hash>.narinfo          HEAD too
//	GET  nar/<file>              HEAD too, with Range support
//	GET  log/<drv base name>     from opts.Logs
//	PUT  nar/<file>              .nar, .nar.xz or .nar.zst, authorized
//	PUT  <hash>.narinfo          authorized, after its NAR
//
// Unknown paths and store paths the cache does not hold get 404 with an
// empty body. Paths with empty, "." or ".." segments get 400.
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
	case strings.HasPrefix(name, "log/"):
		h.serveLog(w, r, strings.TrimPrefix(name, "log/"))
	default:
		notFound(w)
	}
}

func (h *handler) serveCacheInfo(w http.ResponseWriter, r *http.Request) {
	body := fmt.Sprintf("StoreDir: %s\nWantMassQuery: 1\nPriority: %d\n", h.store.cfg.StoreDir, h.store.cfg.Priority)
	writeBody(w, r, cacheInfoContentType, []byte(body))
}

func (h *handler) serveNarInfo(w http.ResponseWriter, r *http.Request, hashPart string) {
	data, err := h.store.narInfoBytes(r.Context(), hashPart)
	if errors.Is(err, ErrNotFound) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	writeBody(w, r, narinfo.ContentType, data)
}

func (h *handler) serveNAR(w http.ResponseWriter, r *http.Request, fileName string) {
	f, err := os.Open(filepath.Join(h.store.narDir, fileName))
	if errors.Is(err, fs.ErrNotExist) {
		notFound(w)
		return
	}

	if err != nil {
		h.internalError(w, r, err)
		return
	}

	defer f.Close()

	w.Header().Set("Content-Type", narContentType)
	// Files in the nar directory never change once they are there, so
	// there is no modification time to offer for conditional requests.
	http.ServeContent(w, r, "", time.Time{}, f)
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
