// Package cache implements a named Nix binary cache: NAR files on disk,
// signed narinfo metadata in badger, and the binary-cache HTTP protocol
// that nix substitutes from and uploads to.
package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dgraph-io/badger/v4"
	"golang.org/x/sync/singleflight"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
	"github.com/gradient-ci/gradient/protocol"
)

const (
	// DefaultName is the name of the cache when Config.Name is empty.
	DefaultName = "main"
	// DefaultPriority is the nix-cache-info priority when Config.Priority
	// is zero. Nix prefers caches with a lower number.
	DefaultPriority = 40
	// DefaultStoreDir is the Nix store directory when Config.StoreDir is
	// empty.
	DefaultStoreDir = "/nix/store"
	// DefaultMaxNARSize is the bound on one NAR, uncompressed or
	// uploaded, when Config.MaxNARSize is zero: 64 GiB.
	DefaultMaxNARSize = 64 << 30
	// DefaultUploadTTL is how long an uploaded NAR waits for its narinfo
	// when Config.UploadTTL is zero.
	DefaultUploadTTL = time.Hour
	// DefaultUpstreamBudget is Config.UpstreamBudget when it is zero.
	DefaultUpstreamBudget = 2 * time.Second
	// DefaultClosureTimeout is Config.ClosureTimeout when it is zero.
	DefaultClosureTimeout = 15 * time.Second
	// DefaultNARIdleTimeout is Config.NARIdleTimeout when it is zero.
	DefaultNARIdleTimeout = 30 * time.Second
	// DefaultNegativeTTL is Config.NegativeTTL when it is zero.
	DefaultNegativeTTL = 30 * time.Second
	// DefaultGCInterval is Config.GCInterval when it is zero.
	DefaultGCInterval = time.Hour
)

var (
	// ErrNotFound is wrapped by lookups of a store path that the cache
	// does not hold.
	ErrNotFound = errors.New("not in cache")

	// ErrHashMismatch is wrapped by PutNAR when a NAR does not match the
	// NarHash or NarSize given for it. Uploads over HTTP get a 400
	// response instead.
	ErrHashMismatch = errors.New("NAR does not match its path info")

	// ErrInvalidNAR is wrapped when bytes put as a NAR are not a NAR
	// archive in the canonical form nix writes. The error names the
	// problem, the path inside the archive and the byte offset. Uploads
	// over HTTP get a 400 response instead, and a pulled NAR is not
	// stored.
	ErrInvalidNAR = errors.New("invalid NAR archive")

	// ErrTooLarge is wrapped when a NAR exceeds Config.MaxNARSize.
	ErrTooLarge = errors.New("NAR too large")

	// ErrConflict is wrapped when a path is put that the cache already
	// holds with another NarHash. A store path's contents never change,
	// so the stored path is kept as it is. Uploads over HTTP get a 409
	// response instead.
	ErrConflict = errors.New("store path is already in the cache with other contents")

	// ErrMissingReference is wrapped by PutNAR when a reference of the
	// path, other than the path itself, is not in the cache. The error
	// names the missing paths: put them first. Uploads over HTTP get a
	// 400 response instead.
	ErrMissingReference = errors.New("reference is not in the cache")
)

var validName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// Clock is the source of the current time, replaced in tests to age
// uploads.
type Clock interface {
	Now() time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

// Config configures a Store. New copies it and fills in the defaults.
type Config struct {
	// Name identifies the cache in badger keys and logs. It defaults to
	// "main" and may contain letters, digits, ".", "_" and "-".
	Name string
	// Dir is the directory for NAR files and unfinished uploads, created
	// if missing. Required.
	Dir string
	// SecretKey signs every narinfo the cache stores, in Nix's
	// "<name>:<base64>" format (see GenerateKey). Required.
	SecretKey string
	// Priority is the nix-cache-info priority stored in the settings of a
	// new cache. It defaults to 40. Settings.Priority replaces it later.
	Priority int
	// StoreDir is the Nix store directory of the paths the cache holds.
	// It defaults to /nix/store.
	StoreDir string
	// MaxNARSize bounds one NAR in bytes, both uncompressed and as
	// uploaded. It defaults to 64 GiB.
	MaxNARSize int64
	// UploadTTL is how long an uploaded NAR without a narinfo is kept
	// before RemoveStaleUploads deletes it. It defaults to one hour and
	// must be at least one second.
	UploadTTL time.Duration
	// Clock defaults to the system clock.
	Clock Clock

	// NoDefaultUpstream leaves out DefaultUpstreamURL when the cache is
	// created. It has no effect on a cache whose settings are stored.
	NoDefaultUpstream bool
	// UpstreamClient sends the requests to upstreams. It defaults to
	// upstream.NewHTTPClient, which gives up on a connect or on response
	// headers after about three seconds.
	UpstreamClient *http.Client
	// UpstreamBreaker configures the circuit breaker of each upstream.
	UpstreamBreaker upstream.BreakerConfig
	// UpstreamBudget bounds the wait for the upstreams' responses to one
	// narinfo request. It defaults to 2 s.
	UpstreamBudget time.Duration
	// ClosureTimeout bounds the pull of a narinfo together with the
	// narinfos of its closure, which are pulled first. It defaults to 15 s.
	ClosureTimeout time.Duration
	// NARIdleTimeout aborts an upstream NAR download that receives no
	// bytes for this long. It defaults to 30 s.
	NARIdleTimeout time.Duration
	// NegativeTTL is how long a narinfo that no upstream holds is answered
	// with 404 without asking them again. It defaults to 30 s; a negative
	// value turns this off.
	NegativeTTL time.Duration
	// TrustedProxies are the addresses whose X-Forwarded-For header is
	// believed when nix-cache-info picks the priority for a client.
	TrustedProxies []netip.Prefix
	// Roots lists the output paths of recent evaluations, which garbage
	// collection keeps. When it is nil only pins keep paths.
	Roots RootSource
	// GCInterval is how often Run collects garbage. It defaults to one
	// hour.
	GCInterval time.Duration
	// PeerTimeout is how long one fetch from the peers that SetPeers sets
	// may go without receiving NAR bytes: the lookup, and then any stall
	// of the transfer. It defaults to 2 minutes.
	PeerTimeout time.Duration
}

// Store is one named binary cache. Its methods are safe for concurrent
// use.
type Store struct {
	db     *badger.DB
	cfg    Config
	key    narinfo.SecretKey
	public narinfo.PublicKey
	logger *slog.Logger

	// keyPrefix starts every badger key of this cache.
	keyPrefix string

	narDir      string
	incomingDir string
	tmpDir      string

	// settings are the current settings, replaced as a whole under
	// settingsMu.
	settings   atomic.Pointer[compiledSettings]
	settingsMu sync.Mutex

	// narInfoFlights makes concurrent pulls of one narinfo share one
	// upstream fetch, keyed by hash part.
	narInfoFlights singleflight.Group
	// peerFlights makes concurrent fetches of one path from the peers
	// share one fetch, keyed by hash part.
	peerFlights singleflight.Group
	// peers is set by SetPeers.
	peers atomic.Pointer[Peers]
	// narFlightsMu guards narFlights, the running NAR downloads by file
	// name.
	narFlightsMu sync.Mutex
	narFlights   map[string]*narFlight

	// pathLocks serialise the check and the write of narinfos with the
	// same hash part, so that a stored path is never replaced (see
	// lockPath).
	pathLocks [64]sync.Mutex

	negative negativeCache
	lastUsed sync.Map // hash part -> unix seconds of the last read
	metrics  *metrics

	// gcMu is held for writing while garbage collection deletes, and for
	// reading by every commit of a narinfo, so a commit never names a NAR
	// file that collection is deleting.
	gcMu sync.RWMutex

	// background is the context of upstream fetches, which outlive the
	// request that started them. Close cancels it and waits for fetches.
	background context.Context
	stop       context.CancelFunc
	fetches    sync.WaitGroup
}

var _ protocol.NARSink = (*Store)(nil)

// New opens the cache named cfg.Name in db and cfg.Dir. The caller owns db
// and closes it after it stops using the Store. Its keys all start with
// "cache/<name>/".
func New(db *badger.DB, cfg Config, logger *slog.Logger) (*Store, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}

	key, err := narinfo.ParseSecretKey(cfg.SecretKey)
	if err != nil {
		return nil, fmt.Errorf("open cache %q: %w", cfg.Name, err)
	}

	background, stop := context.WithCancel(context.Background())

	s := &Store{
		background:  background,
		stop:        stop,
		narFlights:  map[string]*narFlight{},
		metrics:     newMetrics(cfg.Name),
		db:          db,
		cfg:         cfg,
		key:         key,
		public:      key.ToPublicKey(),
		logger:      logger.With("cache", cfg.Name),
		keyPrefix:   "cache/" + cfg.Name + "/",
		narDir:      filepath.Join(cfg.Dir, "nar"),
		incomingDir: filepath.Join(cfg.Dir, "incoming"),
		tmpDir:      filepath.Join(cfg.Dir, "tmp"),
	}

	for _, dir := range []string{s.narDir, s.incomingDir, s.tmpDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("open cache %q: %w", cfg.Name, err)
		}
	}

	s.negative.ttl = cfg.NegativeTTL

	if err := s.loadSettings(); err != nil {
		return nil, err
	}

	return s, nil
}

// Close cancels the upstream downloads that are still running and waits
// for them to stop. The Store must not be used afterwards. The caller
// still closes the badger database.
func (s *Store) Close() error {
	s.narFlightsMu.Lock()
	s.stop()
	s.narFlightsMu.Unlock()

	s.fetches.Wait()

	return nil
}

func (cfg *Config) setDefaults() error {
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}

	if !validName.MatchString(cfg.Name) {
		return fmt.Errorf("open cache: invalid name %q: use letters, digits, '.', '_' and '-'", cfg.Name)
	}

	if cfg.Dir == "" {
		return fmt.Errorf("open cache %q: Dir is empty", cfg.Name)
	}

	if cfg.Priority == 0 {
		cfg.Priority = DefaultPriority
	}

	if cfg.StoreDir == "" {
		cfg.StoreDir = DefaultStoreDir
	}

	if !filepath.IsAbs(cfg.StoreDir) || filepath.Clean(cfg.StoreDir) != cfg.StoreDir || cfg.StoreDir == "/" {
		return fmt.Errorf("open cache %q: StoreDir %q is not a clean absolute path", cfg.Name, cfg.StoreDir)
	}

	if cfg.MaxNARSize == 0 {
		cfg.MaxNARSize = DefaultMaxNARSize
	}

	if cfg.MaxNARSize < 0 {
		return fmt.Errorf("open cache %q: MaxNARSize %d is negative", cfg.Name, cfg.MaxNARSize)
	}

	if cfg.UploadTTL == 0 {
		cfg.UploadTTL = DefaultUploadTTL
	}

	if cfg.UploadTTL < time.Second {
		return fmt.Errorf("open cache %q: UploadTTL %v is shorter than one second", cfg.Name, cfg.UploadTTL)
	}

	if cfg.Clock == nil {
		cfg.Clock = systemClock{}
	}

	if cfg.UpstreamBudget <= 0 {
		cfg.UpstreamBudget = DefaultUpstreamBudget
	}

	if cfg.ClosureTimeout <= 0 {
		cfg.ClosureTimeout = DefaultClosureTimeout
	}

	if cfg.NARIdleTimeout <= 0 {
		cfg.NARIdleTimeout = DefaultNARIdleTimeout
	}

	if cfg.NegativeTTL == 0 {
		cfg.NegativeTTL = DefaultNegativeTTL
	}

	if cfg.GCInterval <= 0 {
		cfg.GCInterval = DefaultGCInterval
	}

	if cfg.PeerTimeout <= 0 {
		cfg.PeerTimeout = DefaultPeerTimeout
	}

	cfg.TrustedProxies = slices.Clone(cfg.TrustedProxies)

	return nil
}

// GenerateKey creates a signing key pair named name, such as
// "gradient.example.org-1", and returns both keys in Nix's
// "<name>:<base64>" format: secret for Config.SecretKey and public for
// the trusted-public-keys setting of clients.
func GenerateKey(name string) (secret, public string, err error) {
	sk, pk, err := narinfo.GenerateKey(name)
	if err != nil {
		return "", "", err
	}

	return sk.String(), pk.String(), nil
}

// Name returns the cache's name.
func (s *Store) Name() string { return s.cfg.Name }

// PublicKey returns the public key of the cache's signing key in Nix's
// "<name>:<base64>" format, for the trusted-public-keys setting of clients.
func (s *Store) PublicKey() string { return s.public.String() }

// StoreDir returns the Nix store directory of the cache's paths.
func (s *Store) StoreDir() string { return s.cfg.StoreDir }
