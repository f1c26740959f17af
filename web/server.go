// Package web serves the node's HTTP interface: the JSON REST API under
// /api/v1 and the binary caches under /cache/<name>/.
package web

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/mesh"
)

// Evaluator starts evaluations. The node implements it.
type Evaluator interface {
	// Enqueue schedules a stored, queued evaluation. It does not block on
	// the evaluation itself.
	Enqueue(ctx context.Context, evalID uint64) error
}

// LogSource opens stored build logs by .drv store path.
type LogSource interface {
	// OpenLog returns the log written so far, or an error wrapping
	// fs.ErrNotExist when the derivation has no log.
	OpenLog(ctx context.Context, drvPath string) (io.ReadCloser, error)
}

// Cache is one binary cache as the API lists it, with the handler that
// serves its binary-cache protocol.
type Cache struct {
	Name string `json:"name"`
	// PublicKey is the key clients put in trusted-public-keys, in Nix's
	// "name:base64" form.
	PublicKey string `json:"public_key"`
	// URL is the substituter URL as seen from this node's listen address.
	URL     string       `json:"url"`
	Handler http.Handler `json:"-"`
	// Admin serves the settings, upstreams, gc and stats endpoints of the
	// cache. When it is nil they answer 404.
	Admin CacheAdmin `json:"-"`
}

// Config holds what the server needs. All fields are required except
// Waits, Logger and Now.
type Config struct {
	DB        *db.DB
	Evaluator Evaluator
	Logs      LogSource
	Caches    []Cache
	// Workers manages remote workers' tokens. When it is nil, the worker
	// endpoints return 501.
	Workers Workers
	// WorkerConnect accepts workers' WebSocket connections at
	// GET /api/v1/workers/connect. It authenticates them by their own
	// token, not the admin token. When it is nil, the path returns 404.
	WorkerConnect http.Handler
	AdminToken    string
	// Metrics serves GET /metrics in the Prometheus text format, without
	// authentication, like the caches. Nil serves no /metrics.
	Metrics http.Handler
	// Waits explains the waits of unfinished builds in the responses
	// that contain builds. When it is nil, they have their stored waits.
	Waits  WaitExplainer
	Logger *slog.Logger
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// LogPollInterval is how often a followed log is checked for new
	// output; default 250 ms.
	LogPollInterval time.Duration
}

// Server is the node's HTTP handler. It is safe for concurrent use.
type Server struct {
	cfg    Config
	log    *slog.Logger
	router chi.Router
	// mesh is set by AddMesh.
	mesh Mesh
	// stopping is closed by Stop.
	stopping chan struct{}
	stopOnce sync.Once
}

// Stop ends the responses that would otherwise stay open until their
// client leaves, such as followed build logs, so that an HTTP server
// shutdown does not wait for them. It is safe to call more than once.
func (s *Server) Stop() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

// New returns a Server for cfg.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LogPollInterval <= 0 {
		cfg.LogPollInterval = 250 * time.Millisecond
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("component", "web"), stopping: make(chan struct{})}

	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Use(s.logRequests)
	if cfg.WorkerConnect != nil {
		r.Get("/api/v1/workers/connect", cfg.WorkerConnect.ServeHTTP)
	}
	if cfg.Metrics != nil {
		r.Handle("/metrics", cfg.Metrics)
	}
	r.Get(mesh.WellKnownPath, s.getWellKnown)
	r.Route("/api/v1", func(r chi.Router) {
		r.Use(s.requireToken)
		r.Get("/orgs", s.listOrgs)
		r.Get("/projects", s.listProjects)
		r.Post("/projects", s.createProject)
		r.Get("/projects/{org}/{project}", s.getProject)
		r.Get("/projects/{org}/{project}/evaluations", s.listEvaluations)
		r.Post("/projects/{org}/{project}/evaluations", s.createEvaluation)
		r.Get("/evaluations/{id}", s.getEvaluation)
		r.Get("/evaluations/{id}/builds", s.listBuilds)
		r.Get("/evaluations/{id}/graph", s.getGraph)
		r.Get("/builds", s.listDerivationBuilds)
		r.Get("/builds/{id}", s.getBuild)
		r.Get("/builds/{id}/log", s.getBuildLog)
		r.Get("/caches", s.listCaches)
		r.Get("/caches/{name}", s.getCache)
		s.cacheRoutes(r)
		s.meshRoutes(r)
		if cfg.Workers != nil {
			r.Post("/workers", s.registerWorker)
			r.Get("/workers", s.listWorkers)
			r.Patch("/workers/{name}", s.updateWorker)
			r.Delete("/workers/{name}", s.revokeWorker)
		} else {
			r.HandleFunc("/workers", workersUnavailable)
			r.HandleFunc("/workers/{name}", workersUnavailable)
		}
		r.NotFound(func(w http.ResponseWriter, r *http.Request) {
			writeError(w, http.StatusNotFound, "no API endpoint %s %s: see docs/api.md", r.Method, r.URL.Path)
		})
	})
	s.router = r
	caches := cfg.Caches
	s.cfg.Caches = nil
	for _, c := range caches {
		s.AddCache(c)
	}
	return s
}

// AddCache serves c under /cache/<name>/ and lists it in the API. Call it
// before the server handles requests; it is not safe for concurrent use
// with ServeHTTP.
func (s *Server) AddCache(c Cache) {
	prefix := "/cache/" + c.Name
	s.router.Mount(prefix+"/", http.StripPrefix(prefix, c.Handler))
	s.cfg.Caches = append(s.cfg.Caches, c)
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.router.ServeHTTP(w, r)
}

// Authorized reports whether r carries the admin token, either as a bearer
// token or as the password of HTTP Basic authentication, which is what nix
// sends from a netrc file.
func (s *Server) Authorized(r *http.Request) bool {
	return TokenMatches(r, s.cfg.AdminToken)
}

// TokenMatches reports whether r carries token as a bearer token or as a
// Basic authentication password. An empty token never matches.
func TokenMatches(r *http.Request, token string) bool {
	if token == "" {
		return false
	}
	var got string
	if auth := r.Header.Get("Authorization"); strings.HasPrefix(auth, "Bearer ") {
		got = strings.TrimPrefix(auth, "Bearer ")
	} else if _, pass, ok := r.BasicAuth(); ok {
		got = pass
	}
	return subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1
}

func (s *Server) requireToken(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.Authorized(r) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="gradient"`)
			writeError(w, http.StatusUnauthorized, "missing or invalid API token: send it as 'Authorization: Bearer TOKEN' (the gradient CLI takes --token or GRADIENT_TOKEN, or reads DATA_DIR/admin-token)")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ww := middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		start := s.cfg.Now()
		next.ServeHTTP(ww, r)
		level := slog.LevelDebug
		if ww.Status() >= 500 {
			level = slog.LevelWarn
		}
		s.log.Log(r.Context(), level, "http request",
			"method", r.Method, "path", r.URL.Path, "status", ww.Status(),
			"bytes", ww.BytesWritten(), "duration_ms", s.cfg.Now().Sub(start).Milliseconds(),
			"remote_addr", r.RemoteAddr)
	})
}

// apiError is the body of every API error response.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, status int, format string, args ...any) {
	writeJSON(w, status, apiError{Error: fmt.Sprintf(format, args...)})
}

// writeDBError maps a record store error to a response: not found is 404,
// anything else is logged and reported as 500.
func (s *Server) writeDBError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, db.ErrNotFound):
		writeError(w, http.StatusNotFound, "%v", err)
	case errors.Is(err, db.ErrExists):
		writeError(w, http.StatusConflict, "%v", err)
	default:
		s.log.Error("database request failed", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error: see the node's log")
	}
}

// maxRequestBody bounds every JSON request body of the API.
const maxRequestBody = 1 << 20

// errBodyTooLarge is returned by readJSON for a body over maxRequestBody.
var errBodyTooLarge = fmt.Errorf("request body is larger than %d bytes", maxRequestBody)

// readJSON decodes the request body into v. Its errors name the JSON field
// or position that is wrong, in words a client can act on, not Go types.
func readJSON(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return describeJSONError(err)
	}
	if dec.More() {
		return errors.New("unexpected data after the JSON object")
	}
	return nil
}

func describeJSONError(err error) error {
	var (
		tooLarge  *http.MaxBytesError
		typeErr   *json.UnmarshalTypeError
		syntaxErr *json.SyntaxError
	)
	switch {
	case errors.As(err, &tooLarge):
		return errBodyTooLarge
	case errors.As(err, &typeErr):
		return fmt.Errorf("field %q must be a JSON %s, not %s", typeErr.Field, jsonKind(typeErr.Type.Kind().String()), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("invalid JSON at byte %d: %v", syntaxErr.Offset, err)
	case errors.Is(err, io.EOF):
		return errors.New("the body is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errors.New("the JSON object is cut off")
	}
	if field, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		return fmt.Errorf("unknown field %s: see docs/api.md for the fields of this request", field)
	}
	return err
}

// jsonKind names a Go kind the way JSON calls it.
func jsonKind(kind string) string {
	switch kind {
	case "slice", "array":
		return "array"
	case "map", "struct":
		return "object"
	case "string":
		return "string"
	case "bool":
		return "boolean"
	}
	return "number"
}

// writeBodyError responds to a body that readJSON rejected: 413 when it is
// too large, 400 otherwise.
func writeBodyError(w http.ResponseWriter, err error) {
	status := http.StatusBadRequest
	if errors.Is(err, errBodyTooLarge) {
		status = http.StatusRequestEntityTooLarge
	}
	writeError(w, status, "invalid request body: %v", err)
}
