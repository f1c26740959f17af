// Package node wires a Gradient node together: the record store, the
// binary caches, the HTTP server, the scheduler and the in-process worker,
// and runs the loop that drives evaluations and builds.
package node

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler"
)

// Config configures a node. The zero value of every optional field picks
// the documented default.
type Config struct {
	// DataDir holds the database, NAR files, logs, keys and the admin
	// token. Default "./gradient-data".
	DataDir string
	// Listen is the HTTP listen address. Default "127.0.0.1:3000".
	Listen string
	// CacheKeyName names the signing key created on first start, in
	// Nix's "name:base64" key format. Default "<hostname>-1".
	CacheKeyName string

	// NoWorker disables the in-process worker.
	NoWorker bool
	// NixBin is the nix binary the in-process worker runs. Default: "nix"
	// looked up on PATH; without it the node runs no worker.
	NixBin string
	// WorkerStore is a chroot store directory for the in-process worker,
	// passed to nix as --store. Empty means the machine's default store.
	WorkerStore string
	// WorkerMaxJobs is how many builds the in-process worker runs at once.
	// Default 1, at most 64.
	WorkerMaxJobs int
	// WorkerSpeed is the build speed of the in-process worker relative to
	// a reference machine, like the speed factor of Hydra's machines
	// file: a build estimated at 60 s is expected to take 30 s at speed
	// 2. Default 1, a positive finite number.
	WorkerSpeed float64

	// NoDefaultUpstream creates the main cache without cache.nixos.org as
	// its upstream. It matters only on the first start; later, upstreams
	// are edited with `gradient cache upstream`.
	NoDefaultUpstream bool
	// TrustedProxies are the addresses whose X-Forwarded-For header the
	// cache believes when it picks the priority for a client.
	TrustedProxies []netip.Prefix

	// MaxConcurrentEvaluations bounds evaluations that run at once.
	// Default 1.
	MaxConcurrentEvaluations int

	// UnsupportedTimeout is how long a build waits for a connected worker
	// with its system and required features. Then it fails, its
	// dependents are marked dependency failed, and its evaluation can
	// finish. A worker that connects in time clears the wait. Zero means
	// DefaultUnsupportedTimeout (5 min); FailUnsupportedAtOnce fails such
	// builds as soon as they are ready.
	UnsupportedTimeout time.Duration

	// WorkerLease is how long a worker may stay silent before the node
	// drops it, and how long the jobs of a worker whose connection
	// dropped wait for it to reconnect before they are queued again.
	// Workers send heartbeats every sixth of it. Default
	// DefaultWorkerLease (30 s).
	WorkerLease time.Duration

	// ShutdownTimeout bounds how long Run waits for HTTP requests to end
	// after its context is cancelled. Default 10 s.
	ShutdownTimeout time.Duration

	// MainCache, when not nil, holds settings of the main cache that the
	// node writes to the stored settings at every start, replacing values
	// changed through the API since. A configuration file's
	// [caches.main] section sets it.
	MainCache *CacheSettings

	// Scheduler sets the scheduler's policy, project shares and
	// estimates. Zero fields get the defaults of scheduler.Config. The
	// keys of ProjectShares are "org/project". JobIDPrefix is ignored,
	// because the node picks a new prefix at every start.
	Scheduler scheduler.Config

	// Mesh configures the federated peer-to-peer cache, which is off
	// unless Mesh.Listen is set.
	Mesh MeshConfig

	Logger *slog.Logger
}

// FailUnsupportedAtOnce is the Config.UnsupportedTimeout that fails a build
// no connected worker can run as soon as its inputs are built.
const FailUnsupportedAtOnce time.Duration = -1

// withDefaults returns a copy of c with defaults filled in.
func (c Config) withDefaults() Config {
	if c.DataDir == "" {
		c.DataDir = "gradient-data"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:3000"
	}
	if c.CacheKeyName == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "gradient"
		}
		c.CacheKeyName = host + "-1"
	}
	if c.WorkerMaxJobs == 0 {
		c.WorkerMaxJobs = 1
	}
	if c.WorkerSpeed == 0 {
		c.WorkerSpeed = db.DefaultWorkerSpeed
	}
	if c.MaxConcurrentEvaluations == 0 {
		c.MaxConcurrentEvaluations = 1
	}
	if c.UnsupportedTimeout == 0 {
		c.UnsupportedTimeout = DefaultUnsupportedTimeout
	}
	if c.WorkerLease == 0 {
		c.WorkerLease = DefaultWorkerLease
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// validate returns an error naming every invalid field of a config with
// defaults filled in.
func (c Config) validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("listen address %q is invalid: give host:port such as 127.0.0.1:3000", c.Listen))
	}
	if c.WorkerMaxJobs < 1 || c.WorkerMaxJobs > 64 {
		errs = append(errs, fmt.Errorf("worker max jobs %d is out of range: give 1 to 64", c.WorkerMaxJobs))
	}
	if c.MaxConcurrentEvaluations < 1 || c.MaxConcurrentEvaluations > 64 {
		errs = append(errs, fmt.Errorf("max concurrent evaluations %d is out of range: give 1 to 64", c.MaxConcurrentEvaluations))
	}
	if c.UnsupportedTimeout < 0 && c.UnsupportedTimeout != FailUnsupportedAtOnce {
		errs = append(errs, fmt.Errorf("unsupported timeout %v is negative: give a duration, or FailUnsupportedAtOnce", c.UnsupportedTimeout))
	}
	if c.WorkerLease < MinWorkerLease || c.WorkerLease > MaxWorkerLease {
		errs = append(errs, fmt.Errorf("worker lease %v is out of range: give %v to %v", c.WorkerLease, MinWorkerLease, MaxWorkerLease))
	}
	if c.WorkerStore != "" && !filepath.IsAbs(c.WorkerStore) {
		errs = append(errs, fmt.Errorf("worker store %q is not an absolute path", c.WorkerStore))
	}
	if err := c.validateScheduler(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
