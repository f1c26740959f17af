package web

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/gradient-ci/gradient/internal/db"
)

// Workers registers remote workers, revokes their tokens and reports them.
// The node implements it.
type Workers interface {
	// Register creates a worker of the given build speed and returns its
	// token, which the node does not keep. An existing name is an error
	// wrapping db.ErrExists.
	Register(ctx context.Context, name string, speed float64) (token string, err error)
	// SetSpeed stores a new build speed for a worker, which applies the
	// next time it joins. An unknown name is an error wrapping
	// db.ErrNotFound, and a worker whose speed comes from the node's
	// configuration an error wrapping ErrSpeedFromConfig.
	SetSpeed(ctx context.Context, name string, speed float64) error
	// List returns every registered or connected worker in name order.
	List(ctx context.Context) ([]WorkerInfo, error)
	// Revoke deletes the worker's token and disconnects it. An unknown
	// name is an error wrapping db.ErrNotFound.
	Revoke(ctx context.Context, name string) error
}

// ErrSpeedFromConfig is wrapped by Workers.SetSpeed for a worker whose
// speed the node's configuration sets, such as the in-process worker.
var ErrSpeedFromConfig = errors.New("the worker's speed is set by the node's configuration")

// ErrInProcessWorker is wrapped by Workers.Register and Workers.Revoke for
// the name of the node's in-process worker, which is neither registered
// nor revoked.
var ErrInProcessWorker = errors.New("the name belongs to the node's in-process worker")

// Worker states in WorkerInfo.State.
const (
	WorkerConnected    = "connected"
	WorkerDisconnected = "disconnected"
	// WorkerAway is a worker whose connection dropped and whose jobs wait
	// for it to reconnect until AwayUntil.
	WorkerAway = "away"
)

// WorkerInfo is a worker as GET /api/v1/workers lists it. The fields from
// the worker's handshake and heartbeats are empty while it is
// disconnected; an away worker keeps its systems, features and max jobs.
type WorkerInfo struct {
	Name string `json:"name"`
	// State is "connected", "away" or "disconnected".
	State string `json:"state"`
	// AwayUntil is when an away worker's jobs go to other workers unless
	// it reconnects.
	AwayUntil *time.Time `json:"away_until,omitempty"`
	// Builds counts the builds it finished, succeeded or failed.
	Builds       uint64     `json:"builds"`
	CreatedAt    time.Time  `json:"created_at"`
	LastSeen     *time.Time `json:"last_seen,omitempty"`
	ConnectedAt  *time.Time `json:"connected_at,omitempty"`
	Capabilities []string   `json:"capabilities,omitempty"`
	Systems      []string   `json:"systems,omitempty"`
	Features     []string   `json:"features,omitempty"`
	MaxJobs      int        `json:"max_jobs,omitempty"`
	RunningJobs  int        `json:"running_jobs"`
	CPUs         int        `json:"cpus,omitempty"`
	MemoryBytes  uint64     `json:"memory_bytes,omitempty"`
	Load1        float64    `json:"load1,omitempty"`
	// FreeDiskBytes is the free space of the worker's store.
	FreeDiskBytes uint64 `json:"free_disk_bytes,omitempty"`
	// Speed is the build speed relative to a machine of speed 1 with
	// which the worker joins the scheduler.
	Speed float64 `json:"speed"`
}

// RegisterWorkerRequest is the body of POST /api/v1/workers.
type RegisterWorkerRequest struct {
	Name string `json:"name"`
	// Speed is the worker's build speed relative to a machine of speed
	// 1. Absent or 0 means 1.
	Speed float64 `json:"speed,omitempty"`
}

// UpdateWorkerRequest is the body of PATCH /api/v1/workers/NAME.
type UpdateWorkerRequest struct {
	// Speed is the worker's new build speed, required.
	Speed *float64 `json:"speed"`
}

// RegisterWorkerResponse is the response to POST /api/v1/workers. The
// token is shown once, because the node keeps only its hash.
type RegisterWorkerResponse struct {
	Name  string `json:"name"`
	Token string `json:"token"`
}

func (s *Server) registerWorker(w http.ResponseWriter, r *http.Request) {
	var req RegisterWorkerRequest
	if err := readJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: %v", err)
		return
	}
	if err := db.ValidateName("name", req.Name); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	speed := req.Speed
	if speed == 0 {
		speed = db.DefaultWorkerSpeed
	}
	if err := db.ValidateWorkerSpeed(speed); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	token, err := s.cfg.Workers.Register(r.Context(), req.Name, speed)
	if errors.Is(err, ErrInProcessWorker) {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	if errors.Is(err, db.ErrExists) {
		writeError(w, http.StatusConflict, "%v: revoke it first with 'gradient worker revoke %s', or pick another name", err, req.Name)
		return
	}
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.log.Info("worker registered", "worker_id", req.Name, "speed", speed)
	writeJSON(w, http.StatusCreated, RegisterWorkerResponse{Name: req.Name, Token: token})
}

func (s *Server) listWorkers(w http.ResponseWriter, r *http.Request) {
	ws, err := s.cfg.Workers.List(r.Context())
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, nonNil(ws))
}

func (s *Server) updateWorker(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	var req UpdateWorkerRequest
	if err := readJSON(w, r, &req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid request body: %v", err)
		return
	}
	if req.Speed == nil {
		writeError(w, http.StatusBadRequest, "speed is missing: give the worker's build speed, such as {\"speed\": 2}")
		return
	}
	if err := db.ValidateWorkerSpeed(*req.Speed); err != nil {
		writeError(w, http.StatusBadRequest, "%v", err)
		return
	}
	err := s.cfg.Workers.SetSpeed(r.Context(), name, *req.Speed)
	if errors.Is(err, ErrSpeedFromConfig) {
		writeError(w, http.StatusConflict, "%v", err)
		return
	}
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.log.Info("worker speed changed", "worker_id", name, "speed", *req.Speed)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) revokeWorker(w http.ResponseWriter, r *http.Request) {
	name := chi.URLParam(r, "name")
	err := s.cfg.Workers.Revoke(r.Context(), name)
	if errors.Is(err, ErrInProcessWorker) {
		writeError(w, http.StatusConflict, "%v", err)
		return
	}
	if err != nil {
		s.writeDBError(w, r, err)
		return
	}
	s.log.Info("worker revoked", "worker_id", name)
	w.WriteHeader(http.StatusNoContent)
}

// workersUnavailable serves the worker endpoints of a server without a
// Workers implementation.
func workersUnavailable(w http.ResponseWriter, r *http.Request) {
	writeError(w, http.StatusNotImplemented, "this node does not manage remote workers")
}
