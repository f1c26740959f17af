package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/internal/worker"
	"github.com/gradient-ci/gradient/scheduler"
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
	cfg := n.cfg
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}

	records, err := db.Open(filepath.Join(cfg.DataDir, "db"), n.log)
	if err != nil {
		return err
	}
	defer records.Close()

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
		Name:      mainCache,
		Dir:       filepath.Join(cfg.DataDir, "caches", mainCache),
		SecretKey: secret,
	}, n.log)
	if err != nil {
		return err
	}

	logs, err := newLogStore(filepath.Join(cfg.DataDir, "logs"))
	if err != nil {
		return err
	}
	drv, err := newDriver(n.log, records, store, logs, cfg.MaxConcurrentEvaluations)
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %q: %w", cfg.Listen, err)
	}
	addr := ln.Addr().String()
	cacheURL := "http://" + addr + "/cache/" + mainCache

	if err := n.startWorker(drv, cacheURL, store.PublicKey()); err != nil {
		ln.Close()
		return err
	}

	srv := web.New(web.Config{
		DB:         records,
		Evaluator:  drv,
		Logs:       logs,
		AdminToken: token,
		Logger:     n.log,
	})
	srv.AddCache(web.Cache{
		Name:      mainCache,
		PublicKey: store.PublicKey(),
		URL:       cacheURL,
		Handler:   store.Handler(cache.HandlerOptions{Authorize: srv.Authorized, Logs: logs}),
	})
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}

	n.log.Info("node started", "listen", addr, "data_dir", cfg.DataDir,
		"substituter", cacheURL, "public_key", store.PublicKey())
	return n.serve(ctx, ln, httpSrv, drv, store)
}

// serve runs the HTTP server, the driver and the cache's upload cleanup
// until ctx ends or one of them fails, then stops all of them.
func (n *Node) serve(ctx context.Context, ln net.Listener, httpSrv *http.Server, drv *driver, store *cache.Store) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

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

	wg.Add(3)
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
		ticker := time.NewTicker(10 * time.Minute)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
				removed, err := store.RemoveStaleUploads(ctx)
				if err != nil {
					n.log.Warn("remove stale uploads failed", "err", err)
				} else if removed > 0 {
					n.log.Info("removed stale uploads", "files", removed)
				}
			}
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

// startWorker registers the in-process worker unless it is disabled or
// nix is missing.
func (n *Node) startWorker(drv *driver, cacheURL, publicKey string) error {
	if n.cfg.NoWorker {
		n.log.Info("in-process worker disabled")
		return nil
	}
	nixBin := n.cfg.NixBin
	if nixBin == "" {
		p, err := exec.LookPath("nix")
		if err != nil {
			n.log.Warn("nix not found on PATH: running without an in-process worker, so nothing is evaluated or built until a worker connects")
			return nil
		}
		nixBin = p
	}

	w, err := worker.New(worker.Config{
		NixBinary:         nixBin,
		StoreDir:          n.cfg.WorkerStore,
		Substituters:      []string{cacheURL},
		TrustedPublicKeys: []string{publicKey},
		MaxJobs:           n.cfg.WorkerMaxJobs,
	}, n.log.With("worker_id", "local"))
	if err != nil {
		return fmt.Errorf("start in-process worker: %w", err)
	}
	system := localSystem()
	if err := drv.addWorker(scheduler.Worker{
		ID:      "local",
		Systems: []string{system},
		Slots:   n.cfg.WorkerMaxJobs,
		Speed:   1,
	}, w, true); err != nil {
		return err
	}
	n.log.Info("in-process worker started", "nix", nixBin, "store", n.cfg.WorkerStore, "system", system, "max_jobs", n.cfg.WorkerMaxJobs)
	return nil
}

// localSystem returns the Nix system string of this machine, such as
// "x86_64-linux".
// NOTE: this ignores nix's extra-platforms setting, so a worker that could
// also build i686-linux is registered for its native system only.
func localSystem() string {
	arch := map[string]string{"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "riscv64": "riscv64"}[runtime.GOARCH]
	if arch == "" {
		arch = runtime.GOARCH
	}
	return arch + "-" + runtime.GOOS
}
