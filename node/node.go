package node

import (
	"context"
	"errors"
	"fmt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/internal/worker"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/web"
)

// mainCache is the name of the cache every node has.
const mainCache = "main"

// Node is one Gradient node. Create it with New and start it with Run.
type Node struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and returns a node that has not started yet.
func New(cfg Config) (*Node, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Node{cfg: cfg, log: cfg.Logger}, nil
}

// Run starts every part of the node and serves until ctx is cancelled,
// then shuts down and returns. It returns an error when a part fails to
// start or stops on its own.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}

	records, err := db.Open(filepath.Join(cfg.DataDir, "db"), n.log)
	if err != nil {
		return err
	}
	defer records.Close()

	// Listen before the first start creates its token and key, so a port
	// that is in use leaves nothing behind.
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	defer ln.Close()

	token, created, err := loadOrCreateSecret(filepath.Join(cfg.DataDir, AdminTokenFile), newToken)
	if err != nil {
		return fmt.Errorf("admin token: %w", err)
	}
	if created {
		n.log.Info("admin token created", "file", filepath.Join(cfg.DataDir, AdminTokenFile))
	}

	secret, created, err := loadOrCreateSecret(filepath.Join(cfg.DataDir, "keys", mainCache+".secret"), func() (string, error) {
		s, _, err := cache.GenerateKey(cfg.CacheKeyName)
		return s, err
	})
	if err != nil {
		return fmt.Errorf("cache signing key: %w", err)
	}
	if created {
		n.log.Info("cache signing key created", "cache", mainCache, "key_name", cfg.CacheKeyName)
	}
	store, err := cache.New(records.Badger(), cache.Config{
		Name:              mainCache,
		Dir:               filepath.Join(cfg.DataDir, "caches", mainCache),
		SecretKey:         secret,
		NoDefaultUpstream: cfg.NoDefaultUpstream,
		TrustedProxies:    cfg.TrustedProxies,
		Roots:             evaluationRoots{db: records},
	}, n.log)
	if err != nil {
		return err
	}
	defer store.Close()
	if cfg.MainCache != nil {
		if err := applyCacheSettings(ctx, store, cfg.MainCache, n.log.With("cache", mainCache)); err != nil {
			return err
		}
	}
	if keyName, _, _ := strings.Cut(store.PublicKey(), ":"); keyName != cfg.CacheKeyName && !created {
		n.log.Warn("cache signing key exists with another name; --cache-key-name applies only when the key is created",
			"key_name", keyName, "requested_key_name", cfg.CacheKeyName)
	}
	metrics := prometheus.NewRegistry()
	if err := metrics.Register(store); err != nil {
		return fmt.Errorf("register cache metrics: %w", err)
	}

	logs, err := newLogStore(filepath.Join(cfg.DataDir, "logs"))
	if err != nil {
		return err
	}

	addr := ln.Addr().String()
	cacheURL := "http://" + addr + "/cache/" + mainCache
	local, noLocalReason, err := n.localWorker(ctx, records, cacheURL, store.PublicKey())
	if err != nil {
		return err
	}

	drv, err := newDriver(n.log, records, store, logs, driverConfig{
		MaxEvaluations:     cfg.MaxConcurrentEvaluations,
		UnsupportedTimeout: cfg.UnsupportedTimeout,
		NoEvalWorkerReason: noLocalReason,
		WorkerLease:        cfg.WorkerLease,
		Scheduler:          cfg.Scheduler,
	})
	if err != nil {
		return err
	}

	registry := &workerRegistry{db: records, now: time.Now, away: drv.away.get,
		revoked: func(id string) { drv.workerRevoked(ctx, id) }}
	hub, err := protocol.NewHub(protocol.HubConfig{
		Authenticate:   registry.authenticate,
		CachePath:      "/cache/" + mainCache,
		CachePublicKey: store.PublicKey(),
		NARs:           store,
		UploadDir:      filepath.Join(cfg.DataDir, "uploads"),
		// Six heartbeats fit in a lease, so a few lost ones do not
		// drop a worker.
		HeartbeatInterval: cfg.WorkerLease / 6,
		Lease:             cfg.WorkerLease,
		Joined:            func(w *protocol.RemoteWorker) { drv.workerJoined(ctx, w) },
		Left:              func(w *protocol.RemoteWorker) { drv.workerLeft(ctx, w) },
		Logger:            n.log,
	})
	if err != nil {
		ln.Close()
		return err
	}
	registry.hub = hub

	srv := web.New(web.Config{
		DB:            records,
		Evaluator:     drv,
		Waits:         drv,
		Logs:          logs,
		Workers:       registry,
		WorkerConnect: hub,
		AdminToken:    token,
		Metrics:       promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}),
		Logger:        n.log,
	})
	srv.AddCache(web.Cache{
		Name:      mainCache,
		PublicKey: store.PublicKey(),
		URL:       cacheURL,
		Handler:   store.Handler(cache.HandlerOptions{Authorize: srv.Authorized, Logs: logs}),
		Admin:     store,
	})
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}
	// Shutdown waits for open responses; followed logs end at once.
	httpSrv.RegisterOnShutdown(srv.Stop)

	meshLink, err := n.startMesh(ctx, store, drv, metrics, srv)
	if err != nil {
		return err
	}
	defer meshLink.stop()

	n.log.Info("node started", "listen", addr, "data_dir", cfg.DataDir,
		"substituter", cacheURL, "public_key", store.PublicKey())
	return n.serve(ctx, cancel, ln, httpSrv, drv, store, hub, local)
}

// serve runs the HTTP server, the driver, the hub, the in-process worker
// when there is one and the cache's upload cleanup until ctx ends or one of
// them fails, then stops all of them.
func (n *Node) serve(ctx context.Context, cancel context.CancelFunc, ln net.Listener, httpSrv *http.Server, drv *driver, store *cache.Store, hub *protocol.Hub, local *protocol.ServeConfig) error {

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}

	wg.Add(4)
	go func() {
		defer wg.Done()
		hub.Run(ctx)
	}()
	if local != nil {
		// The in-process worker speaks the protocol over a Pipe, so it
		// takes the same code path as a remote one.
		nodeEnd, workerEnd := protocol.Pipe()
		wg.Add(2)
		go func() {
			defer wg.Done()
			hub.Attach(ctx, nodeEnd, localWorkerID, "in-process")
		}()
		go func() {
			defer wg.Done()
			if err := protocol.Serve(ctx, workerEnd, *local); err != nil && ctx.Err() == nil {
				fail(fmt.Errorf("in-process worker: %w", err))
			}
		}()
	}
	go func() {
		defer wg.Done()
		if err := httpSrv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			fail(fmt.Errorf("http server: %w", err))
		}
	}()
	go func() {
		defer wg.Done()
		if err := drv.Run(ctx); err != nil {
			fail(err)
		}
	}()
	go func() {
		defer wg.Done()
		if err := store.Run(ctx); err != nil && ctx.Err() == nil {
			fail(fmt.Errorf("cache %s: %w", mainCache, err))
		}
	}()

	<-ctx.Done()
	n.log.Info("node stopping")
	shutdownCtx, stop := context.WithTimeout(context.Background(), n.cfg.ShutdownTimeout)
	defer stop()
	if err := httpSrv.Shutdown(shutdownCtx); err != nil {
		httpSrv.Close()
	}
	wg.Wait()
	n.log.Info("node stopped")
	return errors.Join(errs...)
}

// localWorker returns the session configuration of the in-process
// worker. When there is none, because it is disabled or nix is not on
// PATH, it returns nil and the reason, with how to get a worker. A
// nix binary that does not run `nix --version` is an error, so a wrong
// --nix fails the start rather than the first evaluation.
func (n *Node) localWorker(ctx context.Context, records *db.DB, cacheURL, publicKey string) (*protocol.ServeConfig, string, error) {
	if n.cfg.NoWorker {
		n.log.Info("in-process worker disabled")
		return nil, "this node runs with --no-worker; connect one with 'gradient worker'", nil
	}
	nixBin := n.cfg.NixBin
	if nixBin == "" {
		p, err := exec.LookPath("nix")
		if err != nil {
			n.log.Warn("nix not found on PATH: running without an in-process worker, so nothing is evaluated or built until a worker connects")
			return nil, "nix is not on this node's PATH, so it runs no in-process worker; install nix or connect a worker with 'gradient worker'", nil
		}
		nixBin = p
	}

	w, err := worker.New(worker.Config{
		NixBinary:         nixBin,
		StoreDir:          n.cfg.WorkerStore,
		Substituters:      []string{cacheURL},
		TrustedPublicKeys: []string{publicKey},
		MaxJobs:           n.cfg.WorkerMaxJobs,
	}, n.log.With("worker_id", localWorkerID))
	if err != nil {
		return nil, "", fmt.Errorf("start in-process worker: %w", err)
	}
	versionCtx, cancel := context.WithTimeout(ctx, nixVersionTimeout)
	version, err := w.Nix().Version(versionCtx)
	cancel()
	if err != nil {
		return nil, "", fmt.Errorf("start in-process worker: run %q --version: %w: pass a working nix binary with --nix, or run with --no-worker", nixBin, err)
	}
	if err := records.EnsureWorker(localWorkerID, time.Now()); err != nil {
		return nil, "", fmt.Errorf("store in-process worker record: %w", err)
	}
	if err := records.SetWorkerSpeed(localWorkerID, n.cfg.WorkerSpeed); err != nil {
		return nil, "", fmt.Errorf("store in-process worker speed: %w", err)
	}
	spoolDir := filepath.Join(n.cfg.DataDir, "spool")
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return nil, "", fmt.Errorf("create NAR spool directory: %w", err)
	}
	storeDir := n.cfg.WorkerStore
	if storeDir == "" {
		storeDir = "/nix/store"
	}
	system := worker.NativeSystem()
	featuresCtx, cancel := context.WithTimeout(ctx, nixVersionTimeout)
	features, err := w.Nix().SystemFeatures(featuresCtx)
	cancel()
	if err != nil {
		n.log.Warn("reading nix's system-features failed, so the in-process worker announces none", "err", err)
	}
	n.log.Info("in-process worker started", "nix", nixBin, "nix_version", version.String(), "store", n.cfg.WorkerStore,
		"system", system, "features", strings.Join(features, ","), "max_jobs", n.cfg.WorkerMaxJobs, "speed", n.cfg.WorkerSpeed)
	return &protocol.ServeConfig{
		Systems:  []string{system},
		Features: features,
		MaxJobs:  n.cfg.WorkerMaxJobs,
		Setup:    func(context.Context, *protocol.Welcome) (protocol.Worker, error) { return w, nil },
		SpoolDir: spoolDir,
		StoreDir: storeDir,
		Logger:   n.log.With("worker_id", localWorkerID),
	}, "the in-process worker is not connected", nil
}

// nixVersionTimeout bounds `nix --version` at start.
const nixVersionTimeout = 30 * time.Second
