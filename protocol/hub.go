package protocol

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// ErrInvalidToken is returned by a HubConfig.Authenticate function for a
// token that names no worker. The Hub answers 401.
var ErrInvalidToken = errors.New("invalid worker token")

// ErrWorkerGone is wrapped by the errors a RemoteWorker returns when its
// connection ends before the job does. The job did not fail: the node runs
// it again elsewhere.
var ErrWorkerGone = errors.New("worker disconnected")

// ErrJobDeclined is wrapped by the errors a RemoteWorker returns when the
// worker declined a job, such as when all its slots are busy. The job did
// not run: the node may offer it again, to this worker or another.
var ErrJobDeclined = errors.New("worker declined the job")

// ErrWorkerFault marks a job that failed because of the worker, such as a
// nix binary that does not start, rather than because of what it ran. A
// worker wraps it in the error of such a job, and a RemoteWorker returns
// an error that wraps it, so the node can run the job elsewhere.
var ErrWorkerFault = errors.New("worker fault")

// HubConfig configures a Hub. NewHub copies it and fills in defaults.
type HubConfig struct {
	// Authenticate maps a worker's bearer token to its worker ID. It
	// returns an error wrapping ErrInvalidToken for an unknown token.
	// Required.
	Authenticate func(ctx context.Context, token string) (workerID string, err error)
	// CachePath and CachePublicKey tell workers where the node's binary
	// cache is on its HTTP server and which key signs it.
	CachePath      string
	CachePublicKey string
	// NARs receives uploads that no build job's NARSink takes, such as
	// the .drv files an evaluation uploads. Required.
	NARs NARSink
	// UploadDir keeps partial NAR uploads so that an upload cut by a
	// dropped connection resumes. Required; created if missing.
	UploadDir string
	// PartialTTL is how long an unfinished upload is kept. Default 1 h.
	PartialTTL time.Duration
	// HeartbeatInterval is how often workers send a Heartbeat. Default 5 s.
	HeartbeatInterval time.Duration
	// Lease is how long a worker may stay silent before the Hub drops it.
	// Default 6 heartbeat intervals.
	Lease time.Duration
	// HandshakeTimeout bounds the wait for a worker's Hello. Default 10 s.
	HandshakeTimeout time.Duration
	// Now returns the current time. Default time.Now.
	Now func() time.Time
	// Joined is called when a worker completed its handshake, and Left
	// when its connection ended, after every job on it returned
	// ErrWorkerGone. For one worker ID, Left of an old connection is
	// called before Joined of a new one. Both may be nil.
	Joined func(w *RemoteWorker)
	Left   func(w *RemoteWorker)
	Logger *slog.Logger
}

// Hub is the node's side of the protocol: it accepts worker connections,
// runs the handshake and keeps each connected worker as a RemoteWorker.
// It is safe for concurrent use.
type Hub struct {
	cfg HubConfig
	log *slog.Logger

	// bytesReceived counts NARChunk bytes received.
	bytesReceived atomic.Uint64

	// mu guards the fields below.
	mu       sync.Mutex
	sessions map[string]*session
	// duplicates lists the worker processes refused as duplicates, by
	// worker ID and instance, so that each is logged once.
	duplicates map[string]bool
	// partials lists the partial upload files that a session writes.
	partials map[string]bool
	stopped  bool
}

// NewHub checks cfg and returns a Hub. Call Run to enforce leases.
func NewHub(cfg HubConfig) (*Hub, error) {
	if cfg.Authenticate == nil || cfg.NARs == nil || cfg.UploadDir == "" {
		return nil, errors.New("hub config: Authenticate, NARs and UploadDir are required")
	}
	if cfg.PartialTTL <= 0 {
		cfg.PartialTTL = time.Hour
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 6 * cfg.HeartbeatInterval
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(cfg.UploadDir, 0o700); err != nil {
		return nil, fmt.Errorf("create upload directory: %w", err)
	}
	return &Hub{
		cfg:      cfg,
		log:      cfg.Logger.With("component", "hub"),
		sessions: map[string]*session{},
		partials: map[string]bool{},
	}, nil
}

// ServeHTTP accepts a worker's WebSocket connection. The worker sends its
// token as "Authorization: Bearer TOKEN"; a missing or unknown token gets
// 401 with the reason in the body, before any upgrade. The request lasts
// as long as the session.
func (h *Hub) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || token == "" {
		h.log.Warn("worker connection rejected", "reason", "no token", "remote_addr", r.RemoteAddr)
		http.Error(w, "missing worker token: pass it as 'Authorization: Bearer TOKEN'", http.StatusUnauthorized)
		return
	}
	id, err := h.cfg.Authenticate(r.Context(), token)
	if errors.Is(err, ErrInvalidToken) {
		h.log.Warn("worker connection rejected", "reason", "invalid token", "remote_addr", r.RemoteAddr)
		http.Error(w, "invalid worker token: it is unknown or was revoked; register the worker with 'gradient worker register NAME' and use the token it prints", http.StatusUnauthorized)
		return
	}
	if err != nil {
		h.log.Error("authenticate worker failed", "remote_addr", r.RemoteAddr, "err", err)
		http.Error(w, "authenticate worker: internal error, see the node's log", http.StatusServiceUnavailable)
		return
	}

	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		h.log.Warn("worker WebSocket upgrade failed", "worker_id", id, "remote_addr", r.RemoteAddr, "err", err)
		return
	}
	// The request's context ends with the hijacked connection only when
	// the server closes it, so Run closes sessions on shutdown instead.
	_ = h.Attach(context.WithoutCancel(r.Context()), NewWebSocketConn(c), id, r.RemoteAddr)
}

// Attach runs the session of a connection whose worker is already
// authenticated as workerID: the handshake, then messages until the
// connection ends. It returns why the session ended. The node's
// in-process worker is attached with one end of a Pipe.
func (h *Hub) Attach(ctx context.Context, conn Conn, workerID, remoteAddr string) error {
	log := h.log.With("worker_id", workerID, "remote_addr", remoteAddr)
	hello, err := h.handshake(ctx, conn)
	if err != nil {
		log.Warn("worker rejected", "err", err)
		return err
	}

	s := newSession(h, conn, workerID, hello, log)
	s.remoteAddr = remoteAddr
	if err := h.register(s); errors.Is(err, errDuplicate) {
		// The newcomer retries later rather than exit, because the other
		// process may be a connection that is about to time out.
		reason := fmt.Sprintf("worker %q is connected from another process; give each worker process its own token from 'gradient worker register'", workerID)
		if h.firstDuplicate(workerID, hello.Instance) {
			log.Warn("connection refused: another process is connected with this worker's token", "err", err, "instance", hello.Instance)
		}
		conn.Close(websocket.StatusTryAgainLater, reason)
		return err
	} else if err != nil {
		conn.Close(websocket.StatusGoingAway, err.Error())
		return err
	}
	welcome := &Welcome{
		Version:         Version,
		WorkerID:        workerID,
		HeartbeatMillis: h.cfg.HeartbeatInterval.Milliseconds(),
		LeaseMillis:     h.cfg.Lease.Milliseconds(),
		CachePath:       h.cfg.CachePath,
		CachePublicKey:  h.cfg.CachePublicKey,
		JobBuilt:        true,
	}
	if err := conn.Write(ctx, welcome); err != nil {
		h.unregister(s)
		s.teardown()
		close(s.left)
		return fmt.Errorf("send welcome: %w", err)
	}
	log.Info("worker connected", "systems", strings.Join(hello.Systems, ","), "features", strings.Join(hello.Features, ","),
		"max_jobs", hello.MaxJobs, "capabilities", fmt.Sprint(hello.Capabilities), "cpus", hello.CPUs, "memory_bytes", hello.MemoryBytes)
	if h.cfg.Joined != nil {
		h.cfg.Joined(s.remote)
	}

	err = s.run(ctx)
	h.unregister(s)
	s.teardown()
	log.Info("worker disconnected", "reason", err)
	if h.cfg.Left != nil {
		h.cfg.Left(s.remote)
	}
	close(s.left)
	return err
}

// handshake reads the worker's Hello and checks its version. It sends a
// Reject and closes the connection when the Hello is unacceptable.
func (h *Hub) handshake(ctx context.Context, conn Conn) (Hello, error) {
	readCtx, cancel := context.WithTimeout(ctx, h.cfg.HandshakeTimeout)
	m, err := conn.Read(readCtx)
	cancel()
	if err != nil {
		if errors.Is(err, ErrMalformed) {
			conn.Close(websocket.StatusUnsupportedData, err.Error())
		} else {
			conn.Close(websocket.StatusPolicyViolation, "no hello received")
		}
		return Hello{}, fmt.Errorf("read hello: %w", err)
	}
	hello, ok := m.(*Hello)
	if !ok {
		reason := fmt.Sprintf("expected a hello message first, got %s", m.Type())
		conn.Close(websocket.StatusPolicyViolation, reason)
		return Hello{}, errors.New(reason)
	}
	if hello.Version != Version {
		reason := fmt.Sprintf("protocol version %d is not supported: this node speaks version %d, so upgrade the worker", hello.Version, Version)
		_ = conn.Write(ctx, &Reject{Reason: reason})
		conn.Close(websocket.StatusPolicyViolation, reason)
		return Hello{}, errors.New(reason)
	}
	if !hello.Has(CapEval) && !hello.Has(CapBuild) {
		reason := "the worker offers neither eval nor build"
		_ = conn.Write(ctx, &Reject{Reason: reason})
		conn.Close(websocket.StatusPolicyViolation, reason)
		return Hello{}, errors.New(reason)
	}
	if hello.Has(CapBuild) && len(hello.Systems) == 0 {
		reason := "the worker offers build but names no systems"
		_ = conn.Write(ctx, &Reject{Reason: reason})
		conn.Close(websocket.StatusPolicyViolation, reason)
		return Hello{}, errors.New(reason)
	}
	return *hello, nil
}

// errDuplicate is returned by register for a second process that uses
// the token of a connected worker.
var errDuplicate = errors.New("another process is connected with this worker's token")

// register adds s, first ending an older session of the same worker and
// waiting until its Left callback returned. It returns an error wrapping
// errDuplicate instead when the older session belongs to another worker
// process and is alive: it sent a message within two heartbeats.
func (h *Hub) register(s *session) error {
	for {
		h.mu.Lock()
		if h.stopped {
			h.mu.Unlock()
			return errors.New("node is shutting down")
		}
		old := h.sessions[s.id]
		if old == nil {
			h.sessions[s.id] = s
			h.mu.Unlock()
			return nil
		}
		h.mu.Unlock()
		if old.hello.Instance != "" && s.hello.Instance != "" && old.hello.Instance != s.hello.Instance &&
			h.cfg.Now().Sub(old.lastSeenTime()) < 2*h.cfg.HeartbeatInterval {
			return fmt.Errorf("%w (%s)", errDuplicate, old.remoteAddr)
		}
		old.replace()
		<-old.left
	}
}

func (h *Hub) unregister(s *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[s.id] == s {
		delete(h.sessions, s.id)
	}
}

// firstDuplicate reports whether the process instance of worker id is
// refused as a duplicate for the first time, and records it.
func (h *Hub) firstDuplicate(id, instance string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := id + "\x00" + instance
	if h.duplicates[key] {
		return false
	}
	// A hostile worker can make up instances: keep the map bounded.
	if h.duplicates == nil || len(h.duplicates) >= 1024 {
		h.duplicates = map[string]bool{}
	}
	h.duplicates[key] = true
	return true
}

// Run drops workers whose lease expired and removes stale partial uploads
// until ctx ends, then closes every session and returns nil.
func (h *Hub) Run(ctx context.Context) error {
	ticker := time.NewTicker(h.cfg.HeartbeatInterval)
	defer ticker.Stop()
	sweep := time.NewTicker(10 * time.Minute)
	defer sweep.Stop()
	for {
		select {
		case <-ctx.Done():
			h.mu.Lock()
			h.stopped = true
			sessions := make([]*session, 0, len(h.sessions))
			for _, s := range h.sessions {
				sessions = append(sessions, s)
			}
			h.mu.Unlock()
			for _, s := range sessions {
				s.close(websocket.StatusGoingAway, "node shutting down")
			}
			return nil
		case <-ticker.C:
			h.CheckLeases(h.cfg.Now())
		case <-sweep.C:
			h.RemoveStalePartials(h.cfg.Now())
		}
	}
}

// CheckLeases closes the connection of every worker that sent nothing
// since now minus the lease, and returns how many it closed. Their jobs
// return ErrWorkerGone.
func (h *Hub) CheckLeases(now time.Time) int {
	h.mu.Lock()
	var expired []*session
	for _, s := range h.sessions {
		if now.Sub(s.lastSeenTime()) > h.cfg.Lease {
			expired = append(expired, s)
		}
	}
	h.mu.Unlock()
	for _, s := range expired {
		s.log.Warn("worker lease expired", "lease", h.cfg.Lease, "last_seen", s.lastSeenTime())
		s.close(websocket.StatusPolicyViolation, fmt.Sprintf("lease expired: nothing received for %s", h.cfg.Lease))
	}
	return len(expired)
}

// Disconnect closes the connection of workerID with reason, such as after
// its token was revoked, and reports whether it was connected.
func (h *Hub) Disconnect(workerID, reason string) bool {
	h.mu.Lock()
	s := h.sessions[workerID]
	h.mu.Unlock()
	if s == nil {
		return false
	}
	s.close(websocket.StatusPolicyViolation, reason)
	return true
}

// WorkerStatus is a connected worker as Workers reports it.
type WorkerStatus struct {
	ID          string
	Hello       Hello
	Heartbeat   Heartbeat
	ConnectedAt time.Time
	LastSeen    time.Time
	// RunningJobs counts the jobs the node runs on the worker.
	RunningJobs int
}

// Workers returns the connected workers sorted by ID.
func (h *Hub) Workers() []WorkerStatus {
	h.mu.Lock()
	sessions := make([]*session, 0, len(h.sessions))
	for _, s := range h.sessions {
		sessions = append(sessions, s)
	}
	h.mu.Unlock()

	out := make([]WorkerStatus, 0, len(sessions))
	for _, s := range sessions {
		out = append(out, s.status())
	}
	slices.SortFunc(out, func(a, b WorkerStatus) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// NARBytesReceived returns the compressed NAR bytes received in chunks
// since the Hub started, which shows whether cut uploads resumed.
func (h *Hub) NARBytesReceived() uint64 {
	return h.bytesReceived.Load()
}

// RemoveStalePartials deletes partial uploads that no session writes and
// that did not change since now minus HubConfig.PartialTTL.
func (h *Hub) RemoveStalePartials(now time.Time) {
	entries, err := os.ReadDir(h.cfg.UploadDir)
	if err != nil {
		h.log.Warn("list partial uploads failed", "err", err)
		return
	}
	for _, e := range entries {
		path := filepath.Join(h.cfg.UploadDir, e.Name())
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < h.cfg.PartialTTL {
			continue
		}
		h.mu.Lock()
		busy := h.partials[path]
		h.mu.Unlock()
		if !busy {
			if err := os.Remove(path); err == nil {
				h.log.Info("removed stale partial upload", "file", path)
			}
		}
	}
}
