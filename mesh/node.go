// Package mesh links the Gradient nodes of several organisations, so that
// no node builds or downloads what a member's node already has or is
// building.
//
// Each node runs a libp2p host that admits only the peer IDs of the
// federation's members. Nodes announce the store paths their caches hold
// in a Kademlia DHT under the protocol prefix "/gradient", and the builds
// they run on a GossipSub topic. The stream protocol /gradient/nar/1
// serves a narinfo and its NAR. A fetched NAR is checked against its
// NarHash and a member's signature before it reaches the local cache.
//
// The bookkeeping is deterministic and lives in the subpackages
// federation, announce, progress and candidate; Node drives them with the
// clock and real sockets. See docs/mesh.md.
package mesh

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/libp2p/go-libp2p"
	dht "github.com/libp2p/go-libp2p-kad-dht"
	pb "github.com/libp2p/go-libp2p-kad-dht/pb"
	"github.com/libp2p/go-libp2p-kad-dht/records"
	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/control"
	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/host"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/protocol"
	ma "github.com/multiformats/go-multiaddr"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/announce"
	"github.com/gradient-ci/gradient/mesh/candidate"
	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/mesh/progress"
	"github.com/gradient-ci/gradient/mesh/wire"
)

// ProtocolPrefix is the prefix of the mesh's DHT protocol,
// "/gradient/kad/1.0.0". It keeps the DHT apart from the public IPFS one,
// whose prefix is "/ipfs".
const ProtocolPrefix protocol.ID = "/gradient"

// ErrNotFound is wrapped by Fetch and FindProviders when no peer provides
// a path. The caller goes on to its upstream caches.
var ErrNotFound = errors.New("not found in the mesh")

// ErrClosed is returned by methods called after the node stopped.
var ErrClosed = errors.New("mesh node is closed")

// Cache is the local binary cache a Node serves to its peers.
type Cache interface {
	// NarInfo returns the narinfo of the store path whose hash part is
	// hashPart, or an error wrapping cache.ErrNotFound.
	NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, error)
	// OpenNAR opens the NAR file that a narinfo's URL names, relative to
	// the cache root, as stored, in the narinfo's Compression. It
	// returns the file and its size in bytes. The caller closes it.
	OpenNAR(ctx context.Context, url string) (io.ReadCloser, int64, error)
}

// Node is one member node of the mesh. Its methods are safe for
// concurrent use. Create it with New, then call Run.
type Node struct {
	cfg    Config
	logger *slog.Logger
	host   host.Host
	dht    *dht.IpfsDHT
	pubsub *pubsub.PubSub
	topic  *pubsub.Topic

	federation atomic.Pointer[federation.Federation]
	// serving counts the NAR streams served now.
	serving chan struct{}
	// wake wakes the announce loop when new paths are due.
	wake chan struct{}
	// federationChanged wakes the upstream loop after SetFederation.
	federationChanged chan struct{}
	// cancel stops the context of the DHT and GossipSub.
	cancel    context.CancelFunc
	closeOnce sync.Once
	closeErr  error
	metrics   *metrics
	tracer    meshTracer
	// announced counts published provider records, for Stats.
	announced atomic.Int64
	// messenger sends ADD_PROVIDER messages with the DHT's streams.
	messenger *pb.ProtocolMessenger
	// memberKeys caches the Kademlia IDs of the federation's peers.
	memberKeys atomic.Pointer[memberKeys]

	// resolveMu guards the fields below, which track the DHT lookups of
	// members that the node has no address for.
	resolveMu sync.Mutex
	// resolving holds a channel per lookup in progress, closed when it
	// ends.
	resolving map[peer.ID]chan struct{}
	// resolveFailed is when a member's last lookup failed.
	resolveFailed map[peer.ID]time.Time

	// mu guards the fields below.
	mu        sync.Mutex
	schedule  *announce.Schedule
	board     *progress.Board
	blocklist candidate.Blocklist
	// ownBuilds are the local builds announced with StartBuild, by
	// derivation, with their expected end.
	ownBuilds map[string]time.Time
	// extraPeers are the peers that AddPeer added, dialled again like
	// the bootstrap peers.
	extraPeers []peer.AddrInfo
	// unsignedBlocks lists the blocked peers whose last offence was a
	// narinfo without a member's signature.
	unsignedBlocks map[peer.ID]bool
	// rejectLogged is when the gater last logged a rejected non-member,
	// by peer ID, so that each is logged about once per
	// rejectLogInterval.
	rejectLogged map[peer.ID]time.Time
}

// rejectLogInterval is how often the gater logs the rejected connections
// of one non-member peer.
const rejectLogInterval = time.Hour

// maxRejectLogged bounds the peers whose rejections are remembered: a
// hostile peer can make up any number of peer IDs.
const maxRejectLogged = 1024

// New creates the node's host, DHT, GossipSub router and NAR stream
// handler. The host listens at once, so Status is right before Run. The
// node does nothing else until Run, and Close releases it when Run is
// never called.
func New(cfg Config) (*Node, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}

	cfg.setDefaults()

	schedule, err := announce.New(announce.Config{
		RecordLifetime: cfg.Federation.RecordLifetime(),
		Reannounce:     cfg.Reannounce,
		BatchSize:      cfg.AnnounceBatch,
	})
	if err != nil {
		return nil, fmt.Errorf("create mesh node: %w", err)
	}

	n := &Node{
		cfg:       cfg,
		serving:   make(chan struct{}, cfg.MaxServeStreams),
		wake:      make(chan struct{}, 1),
		schedule:  schedule,
		board:     progress.NewBoard(),
		blocklist: candidate.Blocklist{Duration: cfg.BlockDuration},
		ownBuilds: map[string]time.Time{},

		resolving:     map[peer.ID]chan struct{}{},
		resolveFailed: map[peer.ID]time.Time{},
	}
	n.federationChanged = make(chan struct{}, 1)
	n.federation.Store(cfg.Federation)
	n.metrics = newMetrics(n)

	n.host = cfg.Host
	if n.host == nil {
		n.host, err = libp2p.New(
			libp2p.Identity(cfg.PrivateKey),
			libp2p.ListenAddrStrings(cfg.ListenAddrs...),
			libp2p.ConnectionGater(gater{n}),
		)
		if err != nil {
			return nil, fmt.Errorf("create mesh node: start libp2p host: %w", err)
		}
	}

	n.logger = cfg.Logger.With("peer_id", n.host.ID().String())

	if err := n.start(); err != nil {
		n.host.Close()
		return nil, fmt.Errorf("create mesh node: %w", err)
	}

	return n, nil
}

func (n *Node) start() error {
	bootstrap, err := parseBootstrap(n.cfg.Bootstrap)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	n.cancel = cancel

	n.dht, err = dht.New(n.host,
		dht.Mode(dht.ModeServer),
		dht.ProtocolPrefix(ProtocolPrefix),
		dht.BootstrapPeers(bootstrap...),
		dht.ProviderManagerOpts(records.ProvideValidity(n.cfg.Federation.RecordLifetime())),
		dht.DisableValues(),
	)
	if err != nil {
		cancel()
		return fmt.Errorf("start DHT: %w", err)
	}

	n.messenger, err = pb.NewProtocolMessenger(n.dht.MessageSender())
	if err != nil {
		cancel()
		n.dht.Close()
		return fmt.Errorf("start DHT: %w", err)
	}

	n.pubsub, err = pubsub.NewGossipSub(ctx, n.host,
		pubsub.WithMessageSignaturePolicy(pubsub.StrictSign),
		pubsub.WithMaxMessageSize(4*wire.MaxBuildMessageSize),
		pubsub.WithEventTracer(&n.tracer),
	)
	if err != nil {
		cancel()
		n.dht.Close()
		return fmt.Errorf("start GossipSub: %w", err)
	}

	if err := n.pubsub.RegisterTopicValidator(wire.BuildsTopic, n.validateBuildMessage); err != nil {
		cancel()
		n.dht.Close()
		return fmt.Errorf("start GossipSub: %w", err)
	}

	n.topic, err = n.pubsub.Join(wire.BuildsTopic)
	if err != nil {
		cancel()
		n.dht.Close()
		return fmt.Errorf("join %s: %w", wire.BuildsTopic, err)
	}

	n.host.SetStreamHandler(wire.NARProtocol, n.serveNAR)

	return nil
}

// Run connects to the bootstrap peers and runs the node's loops until ctx
// is cancelled: announcing paths, refreshing and expiring build
// announcements, reading peers' build announcements, measuring round-trip
// times, probing Config.Upstreams for Gradient nodes, and mDNS when
// enabled. It closes the node before it returns ctx's
// error, or the error that stopped a loop.
func (n *Node) Run(ctx context.Context) error {
	defer n.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	sub, err := n.topic.Subscribe()
	if err != nil {
		return fmt.Errorf("run mesh node: subscribe to %s: %w", wire.BuildsTopic, err)
	}
	defer sub.Cancel()

	if n.cfg.MDNS {
		stop, err := n.startMDNS()
		if err != nil {
			return fmt.Errorf("run mesh node: %w", err)
		}
		defer stop()
	}

	n.logger.Info("mesh node started", "addrs", n.host.Addrs(), "members", len(n.Federation().PeerIDs()))

	var wg sync.WaitGroup
	loops := []func(context.Context){n.bootstrapLoop, n.announceLoop, n.buildLoop, n.pingLoop, n.upstreamLoop}
	for _, loop := range loops {
		wg.Go(func() { loop(ctx) })
	}
	wg.Go(func() { n.readBuilds(ctx, sub) })

	<-ctx.Done()
	wg.Wait()

	n.logger.Info("mesh node stopped")

	return ctx.Err()
}

// Close stops the node's DHT, GossipSub router and host. Run calls it on
// return. It is safe to call more than once.
func (n *Node) Close() error {
	n.closeOnce.Do(func() {
		n.cancel()
		n.host.RemoveStreamHandler(wire.NARProtocol)
		n.topic.Close()
		errDHT := n.dht.Close()
		errHost := n.host.Close()
		n.closeErr = errors.Join(errDHT, errHost)
	})

	return n.closeErr
}

// ID returns the node's peer ID.
func (n *Node) ID() peer.ID { return n.host.ID() }

// Host returns the node's libp2p host, for tests and diagnostics.
func (n *Node) Host() host.Host { return n.host }

// Federation returns the current federation.
func (n *Node) Federation() *federation.Federation { return n.federation.Load() }

// SetFederation replaces the federation, such as after the federation
// file changed. Connections to peers that are no longer members are
// closed, and the upstreams of Config.Upstreams are probed again. When
// the members' keys changed, peers blocked for a narinfo without a
// member's signature are given another chance: a missing or wrong key
// makes a member's narinfos fail verification. Peers blocked for bad
// bytes stay blocked.
func (n *Node) SetFederation(f *federation.Federation) {
	old := n.federation.Swap(f)
	if old != nil && !sameKeys(old.Keys(), f.Keys()) {
		n.mu.Lock()
		lifted := len(n.unsignedBlocks)
		for id := range n.unsignedBlocks {
			n.blocklist.Unblock(string(id))
		}
		clear(n.unsignedBlocks)
		n.mu.Unlock()
		if lifted > 0 {
			n.logger.Info("the federation's keys changed, so peers blocked for unsigned narinfos are tried again", "peers", lifted)
		}
	}

	select {
	case n.federationChanged <- struct{}{}:
	default:
	}

	for _, id := range n.host.Network().Peers() {
		if !f.Admits(id) {
			n.logger.Info("closing connection to a peer that left the federation", "remote_peer_id", id.String())
			n.host.Network().ClosePeer(id)
		}
	}
}

// Trust adds the node id with cache key key to organisation org, see
// federation.Federation.Trust, and returns the new federation for the
// caller to save.
func (n *Node) Trust(org string, id peer.ID, key narinfo.PublicKey) (*federation.Federation, error) {
	f, err := n.Federation().Trust(org, id, key)
	if err != nil {
		return nil, err
	}

	n.SetFederation(f)

	return f, nil
}

// Status describes the node for `gradient mesh status`.
type Status struct {
	PeerID         string   `json:"peer_id"`
	Addrs          []string `json:"addrs"`
	CachePublicKey string   `json:"cache_public_key"`
	Peers          int      `json:"peers"`
	Stats          Stats    `json:"stats"`
}

// Status returns the node's peer ID, its addresses with /p2p/<peer ID>
// appended, so another node can use one as a bootstrap address, its cache
// key, the number of connected peers and its Stats.
func (n *Node) Status() Status {
	st := Status{
		PeerID:         n.host.ID().String(),
		CachePublicKey: n.cfg.CachePublicKey,
		Peers:          len(n.host.Network().Peers()),
		Stats:          n.Stats(),
		Addrs:          []string{},
	}

	for _, addr := range n.host.Addrs() {
		st.Addrs = append(st.Addrs, addr.String()+"/p2p/"+st.PeerID)
	}

	return st
}

// PeerInfo describes one connected peer for `gradient mesh peers`.
type PeerInfo struct {
	PeerID string        `json:"peer_id"`
	Org    string        `json:"org"`
	Addrs  []string      `json:"addrs"`
	LAN    bool          `json:"lan"`
	RTT    time.Duration `json:"rtt_ns"`
}

// Peers returns the connected peers, nearest first.
func (n *Node) Peers() []PeerInfo {
	f := n.Federation()

	var candidates []candidate.Candidate
	for _, id := range n.host.Network().Peers() {
		candidates = append(candidates, n.candidate(id))
	}

	candidate.Order(candidates)

	infos := make([]PeerInfo, 0, len(candidates))
	for _, c := range candidates {
		id := peer.ID(c.Peer)
		org, _ := f.OrgOf(id)
		info := PeerInfo{PeerID: id.String(), Org: org, LAN: c.LAN, RTT: c.RTT, Addrs: []string{}}

		for _, conn := range n.host.Network().ConnsToPeer(id) {
			info.Addrs = append(info.Addrs, conn.RemoteMultiaddr().String())
		}

		infos = append(infos, info)
	}

	return infos
}

// parseBootstrap parses multiaddrs that end in /p2p/<peer ID>.
func parseBootstrap(addrs []string) ([]peer.AddrInfo, error) {
	var infos []peer.AddrInfo

	for _, s := range addrs {
		addr, err := ma.NewMultiaddr(s)
		if err != nil {
			return nil, fmt.Errorf("bootstrap address %q: %w", s, err)
		}

		info, err := peer.AddrInfoFromP2pAddr(addr)
		if err != nil {
			return nil, fmt.Errorf("bootstrap address %q must end in /p2p/<peer ID>: %w", s, err)
		}

		infos = append(infos, *info)
	}

	return infos, nil
}

// LoadOrCreateKey reads the node's libp2p private key from path, or
// creates an Ed25519 key and writes it there with mode 0600 when the file
// does not exist.
func LoadOrCreateKey(path string) (crypto.PrivKey, error) {
	data, err := os.ReadFile(path)
	if err == nil {
		key, err := crypto.UnmarshalPrivateKey(data)
		if err != nil {
			return nil, fmt.Errorf("read mesh key %q: %w", path, err)
		}

		return key, nil
	}

	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("read mesh key %q: %w", path, err)
	}

	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	data, err = crypto.MarshalPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	// O_EXCL keeps a key that another process wrote in the meantime.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("create mesh key %q: %w", path, err)
	}

	return key, nil
}

// gater admits connections only with the federation's members. It checks
// the peer ID after the security handshake, so it works with QUIC, where
// a pre-shared key cannot be used.
type gater struct{ n *Node }

func (g gater) InterceptPeerDial(id peer.ID) bool { return g.n.Federation().Admits(id) }

func (g gater) InterceptAddrDial(peer.ID, ma.Multiaddr) bool { return true }

func (g gater) InterceptAccept(network.ConnMultiaddrs) bool { return true }

func (g gater) InterceptSecured(_ network.Direction, id peer.ID, addrs network.ConnMultiaddrs) bool {
	if g.n.Federation().Admits(id) {
		return true
	}

	g.n.metrics.rejectedConns.Inc()
	log := g.n.logger.Debug
	if g.n.firstRejection(id) {
		log = g.n.logger.Info
	}
	log("rejected a connection from a peer that is not a federation member; if it should be one, run 'gradient mesh trust PEER_ID --key KEY' with its peer ID and cache key",
		"remote_peer_id", id.String(), "remote_addr", addrs.RemoteMultiaddr().String())

	return false
}

// firstRejection reports whether the gater rejects id for the first time
// within rejectLogInterval, and records the rejection.
func (n *Node) firstRejection(id peer.ID) bool {
	now := n.cfg.Now()

	n.mu.Lock()
	defer n.mu.Unlock()

	if last, ok := n.rejectLogged[id]; ok && now.Sub(last) < rejectLogInterval {
		return false
	}
	if n.rejectLogged == nil || len(n.rejectLogged) >= maxRejectLogged {
		n.rejectLogged = map[peer.ID]time.Time{}
	}
	n.rejectLogged[id] = now

	return true
}

func (g gater) InterceptUpgraded(network.Conn) (bool, control.DisconnectReason) { return true, 0 }

// sameKeys reports whether a and b hold the same keys, in any order.
func sameKeys(a, b []narinfo.PublicKey) bool {
	if len(a) != len(b) {
		return false
	}
	for _, k := range a {
		if !slices.ContainsFunc(b, func(x narinfo.PublicKey) bool { return x.String() == k.String() }) {
			return false
		}
	}
	return true
}
