// Package cache implements a named Nix binary cache: NAR files on disk,
// signed narinfo metadata in badger, and the binary-cache HTTP protocol
// that nix substitutes from and uploads to.
package cache

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/dgraph-io/badger/v4"

	"github.com/gradient-ci/gradient/cache/narinfo"
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
)

var (
	// ErrNotFound is wrapped by lookups of a store path that the cache
	// does not hold.
	ErrNotFound = errors.New("not in cache")

	// ErrHashMismatch is wrapped by PutNAR when a NAR does not match the
	// NarHash or NarSize given for it. Uploads over HTTP get a 400
	// response instead.
	ErrHashMismatch = errors.New("NAR does not match its path info")

	// ErrTooLarge is wrapped when a NAR exceeds Config.MaxNARSize.
	ErrTooLarge = errors.New("NAR too large")
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
	// Priority is served in nix-cache-info. It defaults to 40.
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

	s := &Store{
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

	return s, nil
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
