package mesh

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/gradient-ci/gradient/mesh/federation"
)

// Defaults of the Config fields, applied where a field is zero.
const (
	DefaultLookupTimeout       = 300 * time.Millisecond
	DefaultDialTimeout         = 5 * time.Second
	DefaultReadTimeout         = 30 * time.Second
	DefaultMaxNARSize          = 64 << 30
	DefaultMaxProviders        = 8
	DefaultAnnounceBatch       = 256
	DefaultAnnounceConcurrency = 32
	DefaultAnnounceTimeout     = 30 * time.Second
	DefaultBuildTTL            = 3 * time.Minute
	DefaultBlockDuration       = time.Hour
	DefaultMaxServeStreams     = 16
	DefaultPingInterval        = 30 * time.Second
	DefaultBootstrapInterval   = 30 * time.Second
	DefaultMaxReferenceDepth   = 64
	DefaultMaxClosurePaths     = 4096
	DefaultUpstreamProbe       = 5 * time.Minute
	DefaultUpstreamCheck       = 10 * time.Second
)

// ErrInvalidConfig is wrapped by Config.Validate errors.
var ErrInvalidConfig = errors.New("invalid mesh config")

// Config configures a Node. New copies it and fills in the defaults.
type Config struct {
	// PrivateKey is the node's libp2p identity, which its peer ID derives
	// from. Required. LoadOrCreateKey keeps one in a file.
	PrivateKey crypto.PrivKey
	// Federation lists the members whose nodes may connect. Required.
	// SetFederation replaces it while the node runs.
	Federation *federation.Federation
	// Cache is the local binary cache that the node serves to peers.
	// Required.
	Cache Cache
	// CachePublicKey is the public key of Cache's signing key in Nix's
	// "<name>:<base64>" format, shown by Status.
	CachePublicKey string

	// ListenAddrs are the multiaddrs to listen on, such as
	// "/ip4/0.0.0.0/udp/4001/quic-v1". Required unless Host is set.
	ListenAddrs []string
	// Bootstrap are multiaddrs of member nodes that end in /p2p/<peer ID>.
	// The node connects to them on start and whenever it has no peers.
	Bootstrap []string
	// MDNS makes the node find and connect to members on the local
	// network by multicast DNS.
	MDNS bool
	// Host is a libp2p host to use in place of one New creates, such as a
	// mocknet host in tests. The Node closes it. ListenAddrs and the
	// connection gater are not applied to it.
	Host host.Host

	// LookupTimeout bounds one provider lookup. It defaults to 300ms.
	LookupTimeout time.Duration
	// DialTimeout bounds opening a stream to a peer. It defaults to 5s.
	DialTimeout time.Duration
	// ReadTimeout is how long a NAR stream may stay idle before it is
	// abandoned. It defaults to 30s.
	ReadTimeout time.Duration
	// MaxNARSize bounds one NAR in bytes, uncompressed and as
	// transferred. It defaults to 64 GiB.
	MaxNARSize int64
	// MaxProviders is the number of providers a lookup waits for before
	// its timeout. It defaults to 8.
	MaxProviders int
	// MaxServeStreams bounds the NAR streams served at once. It defaults
	// to 16; further requests get an error and the peer tries elsewhere.
	MaxServeStreams int
	// MaxReferenceDepth bounds how deep a fetch follows the references
	// that the sink lacks, which it fetches before the path. It defaults
	// to 64.
	MaxReferenceDepth int
	// MaxClosurePaths bounds the references that one fetch copies before
	// the requested path. It defaults to 4096.
	MaxClosurePaths int

	// Reannounce is how long after an announcement a path is announced
	// again. It defaults to half the federation's record lifetime.
	Reannounce time.Duration
	// AnnounceBatch is the number of paths taken from the schedule at
	// once. It defaults to 256.
	AnnounceBatch int
	// AnnounceConcurrency is the number of provider records published at
	// once. It defaults to 32.
	AnnounceConcurrency int
	// AnnounceTimeout bounds publishing one provider record. It defaults
	// to 30s.
	AnnounceTimeout time.Duration

	// BuildTTL is how long an announcement of a local build stays valid.
	// The node refreshes it every BuildTTL/3 until EndBuild. It defaults
	// to 3 minutes and is at most one hour.
	BuildTTL time.Duration
	// BlockDuration is how long a peer that served bad data stays out of
	// the candidates. It defaults to one hour.
	BlockDuration time.Duration
	// PingInterval is how often the node measures the round-trip time to
	// its connected peers, which orders candidates. It defaults to 30s.
	PingInterval time.Duration
	// BootstrapInterval is how often the node dials the bootstrap peers
	// again while it has no peer. It defaults to 30s.
	BootstrapInterval time.Duration

	// Upstreams returns the URLs of the local cache's upstream caches.
	// When it is set, Run probes each one for a Gradient node with
	// ProbeUpstream and adds the members it finds as peers with AddPeer:
	// at start, every UpstreamProbeInterval, and soon after the list or
	// the federation changes. An upstream whose node is connected is not
	// probed. Run calls it from one goroutine every UpstreamCheckInterval,
	// so it must be cheap.
	Upstreams func() []string
	// UpstreamProbeInterval is the mean time between two rounds of
	// probes. Each wait is varied at random by up to a fifth. It defaults
	// to 5 minutes.
	UpstreamProbeInterval time.Duration
	// UpstreamCheckInterval is how often Upstreams is called to notice a
	// changed list, which is probed at once. It defaults to 10s.
	UpstreamCheckInterval time.Duration

	// OnBuild is called for every build announcement of a peer, in the
	// order they arrive, from one goroutine. It must not block for long.
	OnBuild func(BuildNotice)
	// Now returns the current time. It defaults to time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (cfg *Config) setDefaults() {
	setDefault(&cfg.LookupTimeout, DefaultLookupTimeout)
	setDefault(&cfg.DialTimeout, DefaultDialTimeout)
	setDefault(&cfg.ReadTimeout, DefaultReadTimeout)
	setDefault(&cfg.MaxNARSize, DefaultMaxNARSize)
	setDefault(&cfg.MaxProviders, DefaultMaxProviders)
	setDefault(&cfg.MaxServeStreams, DefaultMaxServeStreams)
	setDefault(&cfg.MaxReferenceDepth, DefaultMaxReferenceDepth)
	setDefault(&cfg.MaxClosurePaths, DefaultMaxClosurePaths)
	setDefault(&cfg.AnnounceBatch, DefaultAnnounceBatch)
	setDefault(&cfg.AnnounceConcurrency, DefaultAnnounceConcurrency)
	setDefault(&cfg.AnnounceTimeout, DefaultAnnounceTimeout)
	setDefault(&cfg.BuildTTL, DefaultBuildTTL)
	setDefault(&cfg.BlockDuration, DefaultBlockDuration)
	setDefault(&cfg.PingInterval, DefaultPingInterval)
	setDefault(&cfg.BootstrapInterval, DefaultBootstrapInterval)
	setDefault(&cfg.UpstreamProbeInterval, DefaultUpstreamProbe)
	setDefault(&cfg.UpstreamCheckInterval, DefaultUpstreamCheck)

	if cfg.Federation != nil {
		setDefault(&cfg.Reannounce, cfg.Federation.RecordLifetime()/2)
	}

	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
}

func setDefault[T comparable](field *T, value T) {
	var zero T
	if *field == zero {
		*field = value
	}
}

// Validate checks cfg after the defaults are applied. Errors wrap
// ErrInvalidConfig.
func (cfg Config) Validate() error {
	cfg.setDefaults()

	switch {
	case cfg.PrivateKey == nil:
		return fmt.Errorf("%w: PrivateKey is missing", ErrInvalidConfig)
	case cfg.Federation == nil:
		return fmt.Errorf("%w: Federation is missing", ErrInvalidConfig)
	case cfg.Cache == nil:
		return fmt.Errorf("%w: Cache is missing", ErrInvalidConfig)
	case cfg.Host == nil && len(cfg.ListenAddrs) == 0:
		return fmt.Errorf("%w: ListenAddrs is empty", ErrInvalidConfig)
	case cfg.Reannounce <= 0 || cfg.Reannounce >= cfg.Federation.RecordLifetime():
		return fmt.Errorf("%w: Reannounce %s must be positive and shorter than the record lifetime %s", ErrInvalidConfig, cfg.Reannounce, cfg.Federation.RecordLifetime())
	case cfg.BuildTTL < 3*time.Second || cfg.BuildTTL > time.Hour:
		return fmt.Errorf("%w: BuildTTL %s is outside [3s, 1h]", ErrInvalidConfig, cfg.BuildTTL)
	}

	for name, d := range map[string]time.Duration{
		"LookupTimeout": cfg.LookupTimeout, "DialTimeout": cfg.DialTimeout, "ReadTimeout": cfg.ReadTimeout,
		"AnnounceTimeout": cfg.AnnounceTimeout, "BlockDuration": cfg.BlockDuration, "PingInterval": cfg.PingInterval,
		"UpstreamProbeInterval": cfg.UpstreamProbeInterval, "UpstreamCheckInterval": cfg.UpstreamCheckInterval,
		"BootstrapInterval": cfg.BootstrapInterval,
	} {
		if d < 0 {
			return fmt.Errorf("%w: %s %s is negative", ErrInvalidConfig, name, d)
		}
	}

	for name, n := range map[string]int64{
		"MaxNARSize": cfg.MaxNARSize, "MaxProviders": int64(cfg.MaxProviders), "MaxServeStreams": int64(cfg.MaxServeStreams),
		"MaxReferenceDepth": int64(cfg.MaxReferenceDepth), "MaxClosurePaths": int64(cfg.MaxClosurePaths),
		"AnnounceBatch": int64(cfg.AnnounceBatch), "AnnounceConcurrency": int64(cfg.AnnounceConcurrency),
	} {
		if n < 0 {
			return fmt.Errorf("%w: %s %d is negative", ErrInvalidConfig, name, n)
		}
	}

	for _, s := range cfg.ListenAddrs {
		if _, err := ma.NewMultiaddr(s); err != nil {
			return fmt.Errorf("%w: listen address %q: %w", ErrInvalidConfig, s, err)
		}
	}

	if _, err := parseBootstrap(cfg.Bootstrap); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}

	return nil
}
