package web

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/mesh/federation"
)

// Mesh is the node's side of the federated peer-to-peer cache, as the API
// shows and changes it. The node implements it when it runs with the mesh
// enabled.
type Mesh interface {
	// Status returns the node's peer ID, addresses, cache key and counts.
	Status() mesh.Status
	// Peers returns the connected peers, nearest first.
	Peers() []mesh.PeerInfo
	// WellKnown returns the document served at mesh.WellKnownPath.
	WellKnown() mesh.WellKnown
	// Trust adds a peer ID and cache key to an organisation of the
	// federation and saves the federation. Its errors wrap
	// federation.ErrInvalid when the request conflicts with the
	// federation.
	Trust(ctx context.Context, req MeshTrustRequest) (MeshTrustResponse, error)
	// Find returns the peers that provide storePath and the peers that
	// build its derivation. Its errors wrap narinfo.ErrInvalidStorePath
	// for an invalid path.
	Find(ctx context.Context, storePath string) (MeshFindResult, error)
}

// MeshTrustRequest is the body of POST /api/v1/mesh/trust.
type MeshTrustRequest struct {
	PeerID string `json:"peer_id"`
	// Key is the member's cache public key in Nix's "<name>:<base64>"
	// format.
	Key string `json:"key"`
	// Org is the member organisation. It defaults to the key's name.
	Org string `json:"org,omitempty"`
}

// MeshTrustResponse is the response to POST /api/v1/mesh/trust.
type MeshTrustResponse struct {
	Org string `json:"org"`
	// File is the federation file the node saved.
	File    string              `json:"file"`
	Members []federation.Member `json:"members"`
}

// MeshFindResult is the body of GET /api/v1/mesh/find.
type MeshFindResult struct {
	StorePath string          `json:"store_path"`
	Providers []mesh.Provider `json:"providers"`
	// DrvPath is the derivation that builds StorePath: StorePath itself
	// for a .drv path, or the Deriver of its narinfo in the local cache.
	// It is empty when neither is known.
	DrvPath  string         `json:"drv_path,omitempty"`
	Building []MeshBuilding `json:"building"`
}

// MeshBuilding is a peer's announcement that it builds a derivation.
type MeshBuilding struct {
	PeerID string    `json:"peer_id"`
	ETA    time.Time `json:"eta"`
}

// AddMesh serves the mesh endpoints with m. Without it they return 503.
// Call it before the server handles requests; it is not safe for
// concurrent use with ServeHTTP.
func (s *Server) AddMesh(m Mesh) {
	s.mesh = m
}

// meshRoutes adds the endpoints under /api/v1/mesh.
func (s *Server) meshRoutes(r chi.Router) {
	r.Get("/mesh/status", s.withMesh(func(w http.ResponseWriter, r *http.Request, m Mesh) {
		writeJSON(w, http.StatusOK, m.Status())
	}))
	r.Get("/mesh/peers", s.withMesh(func(w http.ResponseWriter, r *http.Request, m Mesh) {
		writeJSON(w, http.StatusOK, m.Peers())
	}))
	r.Post("/mesh/trust", s.withMesh(s.meshTrust))
	r.Get("/mesh/find", s.withMesh(s.meshFind))
}

// getWellKnown serves mesh.WellKnownPath without authentication, like
// the caches, so that a node whose upstream this node is can find it.
func (s *Server) getWellKnown(w http.ResponseWriter, r *http.Request) {
	if s.mesh == nil {
		writeError(w, http.StatusNotFound, "this node runs without the mesh")
		return
	}

	writeJSON(w, http.StatusOK, s.mesh.WellKnown())
}

func (s *Server) withMesh(next func(http.ResponseWriter, *http.Request, Mesh)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.mesh == nil {
			writeError(w, http.StatusServiceUnavailable, "the mesh is disabled on this node: start it with --mesh-listen MULTIADDR")
			return
		}

		next(w, r, s.mesh)
	}
}

func (s *Server) meshTrust(w http.ResponseWriter, r *http.Request, m Mesh) {
	var req MeshTrustRequest
	if err := readJSON(w, r, &req); err != nil {
		writeBodyError(w, err)
		return
	}

	resp, err := m.Trust(r.Context(), req)
	switch {
	case errors.Is(err, federation.ErrInvalid):
		writeError(w, http.StatusBadRequest, "%v", err)
	case err != nil:
		s.log.Error("trust mesh peer failed", "peer_id", req.PeerID, "err", err)
		writeError(w, http.StatusInternalServerError, "trusting the peer failed: see the node's log")
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

func (s *Server) meshFind(w http.ResponseWriter, r *http.Request, m Mesh) {
	storePath := r.URL.Query().Get("path")
	if storePath == "" {
		writeError(w, http.StatusBadRequest, "missing query parameter path: give a store path such as /nix/store/<hash>-<name>")
		return
	}

	result, err := m.Find(r.Context(), storePath)
	switch {
	case errors.Is(err, narinfo.ErrInvalidStorePath):
		writeError(w, http.StatusBadRequest, "path: %v", err)
	case err != nil:
		s.log.Error("find in the mesh failed", "store_path", storePath, "err", err)
		writeError(w, http.StatusInternalServerError, "finding the path failed: see the node's log")
	default:
		writeJSON(w, http.StatusOK, result)
	}
}
