package web

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/gradient-ci/gradient/internal/attrpath"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/internal/flakeref"
)

// DefaultEntryPoints are the patterns a project gets when it names none.
var DefaultEntryPoints = []string{"packages.*.*", "checks.*.*"}

// CreateProjectRequest is the body of POST /api/v1/projects.
type CreateProjectRequest struct {
	Org         string   `json:"org"`
	Name        string   `json:"name"`
	Flake       string   `json:"flake"`
	EntryPoints []string `json:"entry_points,omitempty"`
}

func (s *Server) listOrgs(w http.ResponseWriter, r *http.Request) {
	orgs, err := s.cfg.DB.ListOrgs()
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(orgs))
}

func (s *Server) listProjects(w http.ResponseWriter, r *http.Request) {
	ps, err := s.cfg.DB.ListProjects(r.URL.Query().Get("org"))
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ps))
}

func (s *Server) createProject(w http.ResponseWriter, r *http.Request) {
	var req CreateProjectRequest
	if err := readJSON(w, r, &req); err != nil {
		writeBodyError(w, err)
		return
	}
	if err := db.ValidateName("org", req.Org); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if err := db.ValidateName("name", req.Name); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if _, err := flakeref.Parse(req.Flake); err != nil {
		writeError(w, http.StatusBadRequest, "flake: %v", err)
		return
	}
	if len(req.EntryPoints) == 0 {
		req.EntryPoints = DefaultEntryPoints
	}
	for _, p := range req.EntryPoints {
		if _, err := attrpath.Parse(p); err != nil {
			writeError(w, http.StatusBadRequest, "entry_points: %v", err)
			return
		}
	}

	p, err := s.cfg.DB.CreateProject(db.Project{
		Org:         req.Org,
		Name:        req.Name,
		FlakeRef:    req.Flake,
		EntryPoints: req.EntryPoints,
	}, s.cfg.Now())
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.log.Info("project created", "org", p.Org, "project", p.Name, "flake", p.FlakeRef)
	writeJSON(w, http.StatusCreated, p)
}

func (s *Server) getProject(w http.ResponseWriter, r *http.Request) {
	p, err := s.cfg.DB.GetProject(chi.URLParam(r, "org"), chi.URLParam(r, "project"))
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) createEvaluation(w http.ResponseWriter, r *http.Request) {
	org, project := chi.URLParam(r, "org"), chi.URLParam(r, "project")
	e, err := s.cfg.DB.CreateEvaluation(org, project, s.cfg.Now())
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	if err := s.cfg.Evaluator.Enqueue(r.Context(), e.ID); err != nil {
		s.log.Error("enqueue evaluation failed", "evaluation_id", e.ID, "err", err)
		writeError(w, http.StatusServiceUnavailable, "evaluation %d is stored but could not be queued: %v", e.ID, err)
		return
	}
	s.log.Info("evaluation queued", "org", org, "project", project, "evaluation_id", e.ID)
	writeJSON(w, http.StatusAccepted, e)
}

func (s *Server) listEvaluations(w http.ResponseWriter, r *http.Request) {
	org, project := chi.URLParam(r, "org"), chi.URLParam(r, "project")
	if _, err := s.cfg.DB.GetProject(org, project); err != nil {
		s.writeDBError(w, r, err)
		return
	}
	limit := 20
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "limit %q is invalid: give a number from 1 to 1000", v)
			return
		}
		limit = n
	}
	es, err := s.cfg.DB.ListEvaluations(org, project, limit)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(es))
}

func (s *Server) getEvaluation(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	e, err := s.cfg.DB.GetEvaluation(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, e)
}

func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	if _, err := s.cfg.DB.GetEvaluation(id); err != nil {
		s.writeDBError(w, r, err)
		return
	}
	bs, err := s.cfg.DB.ListBuilds(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.describeBuilds(r.Context(), bs)
	writeJSON(w, http.StatusOK, nonNil(bs))
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	b, err := s.cfg.DB.GetBuild(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	bs := []db.Build{b}
	s.describeBuilds(r.Context(), bs)
	writeJSON(w, http.StatusOK, bs[0])
}

// getBuildLog writes the build's log as plain text. With ?follow=true it
// keeps the response open and sends new output until the build finishes.
func (s *Server) getBuildLog(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(w, r)
	if !ok {
		return
	}
	b, err := s.cfg.DB.GetBuild(id)
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	follow := r.URL.Query().Get("follow") == "true" || r.URL.Query().Get("follow") == "1"

	f, err := s.cfg.Logs.OpenLog(r.Context(), b.DrvPath)
	if err != nil {
		// OpenLog may return a typed nil reader along with the error.
		f = nil
	}
	if errors.Is(err, fs.ErrNotExist) && !follow {
		writeError(w, http.StatusNotFound, "build %d has no log (status %s)", id, b.Status)
		return
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.log.Error("open build log failed", "build_id", id, "drv_path", b.DrvPath, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error: see the node's log")
		return
	}

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	if !follow {
		defer f.Close()
		_, _ = io.Copy(w, f)
		return
	}
	s.followLog(w, r, b, f)
}

// followLog copies f to w, then polls for more output until the build is
// finished and everything has been sent, or the client goes away. f may be
// nil when the build has not written a log yet.
func (s *Server) followLog(w http.ResponseWriter, r *http.Request, b db.Build, f io.ReadCloser) {
	// Send the headers now, so the client knows the build exists even
	// while it waits in the queue without a log.
	flusher, _ := w.(http.Flusher)
	w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	ticker := time.NewTicker(s.cfg.LogPollInterval)
	defer ticker.Stop()
	defer func() {
		if f != nil {
			f.Close()
		}
	}()

	for {
		if f == nil {
			var err error
			if f, err = s.cfg.Logs.OpenLog(r.Context(), b.DrvPath); err != nil {
				f = nil
			}
		}
		if f != nil {
			if _, err := io.Copy(w, f); err != nil {
				return
			}
			if flusher != nil {
				flusher.Flush()
			}
		}

		// Read the status before the last copy so that output written
		// just before the build finished is still sent.
		if b.Status.Finished() {
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-s.stopping:
			fmt.Fprintf(w, "\ngradient: the node is shutting down while build %d is %s; follow the log again once it is back\n", b.ID, b.Status)
			return
		case <-ticker.C:
		}
		nb, err := s.cfg.DB.GetBuild(b.ID)
		if err != nil {
			return
		}
		b = nb
	}
}

func (s *Server) listCaches(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, nonNil(s.cfg.Caches))
}

func (s *Server) getCache(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	for _, c := range s.cfg.Caches {
		if c.Name == name {
			writeJSON(w, http.StatusOK, c)
			return
		}
	}
	writeError(w, http.StatusNotFound, "cache %q not found", name)
}

func parseID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	v := chi.URLParam(r, "id")
	id, err := strconv.ParseUint(v, 10, 64)
	if err != nil || id == 0 {
		writeError(w, http.StatusBadRequest, "id %q is invalid: give a positive number", strings.TrimSpace(v))
		return 0, false
	}
	return id, true
}

// nonNil makes an empty list encode as [] instead of null.
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
