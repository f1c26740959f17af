package web

import (
	"context"
	"errors"
	"net/http"

	"github.com/go-chi/chi/v5"

	"github.com/gradient-ci/gradient/cache"
)

// CacheAdmin reads and changes a binary cache's settings, collects its
// garbage and reads its metrics. *cache.Store implements it.
type CacheAdmin interface {
	Settings() cache.Settings
	UpdateSettings(ctx context.Context, update cache.SettingsUpdate) (cache.Settings, error)
	AddUpstream(ctx context.Context, u cache.Upstream) (cache.Settings, error)
	RemoveUpstream(ctx context.Context, upstreamURL string) (cache.Settings, error)
	GC(ctx context.Context, opts cache.GCOptions) (cache.GCReport, error)
	Stats() ([]cache.StatsRow, error)
}

var _ CacheAdmin = (*cache.Store)(nil)

// cacheRoutes adds the endpoints that manage caches under /caches/{name}.
func (s *Server) cacheRoutes(r chi.Router) {
	r.Get("/caches/{name}/settings", s.withCacheAdmin(s.getCacheSettings))
	r.Patch("/caches/{name}/settings", s.withCacheAdmin(s.patchCacheSettings))
	r.Get("/caches/{name}/upstreams", s.withCacheAdmin(s.listUpstreams))
	r.Post("/caches/{name}/upstreams", s.withCacheAdmin(s.addUpstream))
	r.Delete("/caches/{name}/upstreams", s.withCacheAdmin(s.removeUpstream))
	r.Post("/caches/{name}/gc", s.withCacheAdmin(s.collectGarbage))
	r.Get("/caches/{name}/stats", s.withCacheAdmin(s.getCacheStats))
}

type cacheAdminHandler func(w http.ResponseWriter, r *http.Request, admin CacheAdmin)

// withCacheAdmin finds the cache named in the path and passes its admin
// interface on, or responds with 404.
func (s *Server) withCacheAdmin(next cacheAdminHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		name := chi.URLParam(r, "name")

		for _, c := range s.cfg.Caches {
			if c.Name == name && c.Admin != nil {
				next(w, r, c.Admin)
				return
			}
		}

		writeError(w, http.StatusNotFound, "cache %q not found", name)
	}
}

func (s *Server) getCacheSettings(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	writeJSON(w, http.StatusOK, admin.Settings())
}

func (s *Server) patchCacheSettings(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	var update cache.SettingsUpdate
	if err := readJSON(w, r, &update); err != nil {
		writeBodyError(w, err)
		return
	}

	settings, err := admin.UpdateSettings(r.Context(), update)
	if err != nil {
		s.writeCacheError(w, r, err)
		return
	}

	writeJSON(w, http.StatusOK, settings)
}

func (s *Server) listUpstreams(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	writeJSON(w, http.StatusOK, nonNil(admin.Settings().Upstreams))
}

func (s *Server) addUpstream(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	var u cache.Upstream
	if err := readJSON(w, r, &u); err != nil {
		writeBodyError(w, err)
		return
	}

	settings, err := admin.AddUpstream(r.Context(), u)
	if err != nil {
		s.writeCacheError(w, r, err)
		return
	}

	writeJSON(w, http.StatusCreated, nonNil(settings.Upstreams))
}

func (s *Server) removeUpstream(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	upstreamURL := r.URL.Query().Get("url")
	if upstreamURL == "" {
		writeError(w, http.StatusBadRequest, "query parameter url is missing: give the upstream's URL")
		return
	}

	settings, err := admin.RemoveUpstream(r.Context(), upstreamURL)
	if err != nil {
		s.writeCacheError(w, r, err)
		return
	}

	writeJSON(w, http.StatusOK, nonNil(settings.Upstreams))
}

func (s *Server) collectGarbage(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	var opts cache.GCOptions
	if r.ContentLength != 0 {
		if err := readJSON(w, r, &opts); err != nil {
			writeBodyError(w, err)
			return
		}
	}

	report, err := admin.GC(r.Context(), opts)
	if err != nil {
		s.writeCacheError(w, r, err)
		return
	}

	writeJSON(w, http.StatusOK, report)
}

func (s *Server) getCacheStats(w http.ResponseWriter, r *http.Request, admin CacheAdmin) {
	rows, err := admin.Stats()
	if err != nil {
		s.writeCacheError(w, r, err)
		return
	}

	writeJSON(w, http.StatusOK, nonNil(rows))
}

// writeCacheError maps a cache error to a response: an invalid setting is
// 400, an unknown upstream 404, anything else is logged and 500.
func (s *Server) writeCacheError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, cache.ErrInvalidSettings):
		writeError(w, http.StatusBadRequest, "%v", err)
	case errors.Is(err, cache.ErrNotFound):
		writeError(w, http.StatusNotFound, "%v", err)
	default:
		s.log.Error("cache request failed", "path", r.URL.Path, "error", err)
		writeError(w, http.StatusInternalServerError, "internal error: see the node's log")
	}
}
