package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/mesh/wire"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
	"github.com/gradient-ci/gradient/web"
)

// MeshConfig configures the node's mesh, the federated peer-to-peer
// cache. The mesh runs only when Listen is not empty, so a node without
// it opens no libp2p port.
type MeshConfig struct {
	// Listen are the libp2p multiaddrs to listen on, such as
	// "/ip4/0.0.0.0/udp/4001/quic-v1".
	Listen []string
	// Bootstrap are multiaddrs of member nodes, each ending in
	// /p2p/<peer ID>.
	Bootstrap []string
	// FederationFile is the federation's JSON file. Default
	// <data-dir>/mesh-federation.json. A missing file is a federation
	// without members, which `gradient mesh trust` adds to.
	FederationFile string
	// MDNS finds members on the local network by multicast DNS.
	MDNS bool
	// BuildTTL is how long the announcement of a local build stays valid
	// without a refresh, and how often peers' announcements are checked
	// for expiry (every BuildTTL/3). Zero means DefaultMeshBuildTTL, and
	// the node does not start with a value outside MinMeshBuildTTL to
	// MaxMeshBuildTTL.
	BuildTTL time.Duration
}

// Default and limits of MeshConfig.BuildTTL. The limits are the ones
// that mesh.Config.Validate enforces.
const (
	DefaultMeshBuildTTL = mesh.DefaultBuildTTL
	MinMeshBuildTTL     = 3 * time.Second
	MaxMeshBuildTTL     = time.Hour
)

// MeshKeyFile is the file under <data-dir>/keys that holds the node's
// libp2p private key.
const MeshKeyFile = "mesh.key"

// meshLink connects the mesh node with the cache, the driver and the API.
// Its methods are safe for concurrent use.
type meshLink struct {
	node    *mesh.Node
	store   *cache.Store
	log     *slog.Logger
	fedFile string

	// trustMu serialises changes of the federation file.
	trustMu sync.Mutex

	cancel context.CancelFunc
	done   chan struct{}
}

// startMesh starts the mesh when cfg.Mesh.Listen is set, and returns nil
// otherwise. It connects the mesh with the cache, the driver, the metrics
// registry and the API server, and announces the cached paths. The mesh
// node probes the cache's upstreams for Gradient nodes at start, every
// few minutes and soon after the upstream list changes. The caller stops
// it with stop before it closes the cache.
func (n *Node) startMesh(ctx context.Context, store *cache.Store, drv *driver, metrics *prometheus.Registry, srv *web.Server) (*meshLink, error) {
	cfg := n.cfg.Mesh
	if len(cfg.Listen) == 0 {
		return nil, nil
	}

	key, err := mesh.LoadOrCreateKey(filepath.Join(n.cfg.DataDir, "keys", MeshKeyFile))
	if err != nil {
		return nil, fmt.Errorf("start mesh: %w", err)
	}

	fedFile := cfg.FederationFile
	if fedFile == "" {
		fedFile = filepath.Join(n.cfg.DataDir, "mesh-federation.json")
	}

	fed, err := loadFederation(fedFile)
	if err != nil {
		return nil, fmt.Errorf("start mesh: %w", err)
	}

	link := &meshLink{store: store, log: n.log.With("component", "mesh"), fedFile: fedFile, done: make(chan struct{})}

	link.node, err = mesh.New(mesh.Config{
		PrivateKey:     key,
		Federation:     fed,
		Cache:          store,
		CachePublicKey: store.PublicKey(),
		ListenAddrs:    cfg.Listen,
		Bootstrap:      cfg.Bootstrap,
		MDNS:           cfg.MDNS,
		BuildTTL:       cfg.BuildTTL,
		Upstreams:      func() []string { return upstreamURLs(store) },
		OnBuild:        func(notice mesh.BuildNotice) { drv.peerBuild(ctx, notice) },
		Logger:         link.log,
	})
	if err != nil {
		return nil, fmt.Errorf("start mesh: %w", err)
	}

	for _, c := range link.node.Collectors() {
		if err := metrics.Register(c); err != nil {
			link.node.Close()
			return nil, fmt.Errorf("register mesh metrics: %w", err)
		}
	}

	drv.mesh = link
	store.SetPeers(meshPeers{link})
	srv.AddMesh(link)

	runCtx, cancel := context.WithCancel(ctx)
	link.cancel = cancel

	go func() {
		defer close(link.done)
		if err := link.node.Run(runCtx); err != nil && runCtx.Err() == nil {
			link.log.Error("mesh node stopped", "err", err)
		}
	}()
	go link.announceStored(runCtx)

	st := link.node.Status()
	n.log.Info("mesh started", "peer_id", st.PeerID, "addrs", st.Addrs, "federation_file", fedFile,
		"members", len(fed.Members()))

	return link, nil
}

// stop stops the mesh node and waits for it. It is safe on a nil link.
func (l *meshLink) stop() {
	if l == nil {
		return
	}

	l.store.SetPeers(nil)
	l.cancel()
	<-l.done
}

// loadFederation reads the federation file, or returns a federation
// without members when the file does not exist.
func loadFederation(file string) (*federation.Federation, error) {
	f, err := os.Open(file)
	if errors.Is(err, os.ErrNotExist) {
		return federation.New(0, nil)
	}

	if err != nil {
		return nil, fmt.Errorf("read federation file %q: %w", file, err)
	}
	defer f.Close()

	fed, err := federation.Parse(f)
	if err != nil {
		return nil, fmt.Errorf("read federation file %q: %w", file, err)
	}

	return fed, nil
}

// announceStored announces every path of the cache, as a restarted node
// must because provider records live in the peers' memory.
func (l *meshLink) announceStored(ctx context.Context) {
	const batch = 1024

	var paths []string
	count := 0

	flush := func() error {
		if err := l.node.AnnouncePaths(paths...); err != nil {
			return err
		}

		count += len(paths)
		paths = paths[:0]

		return nil
	}

	err := l.store.StorePaths(ctx, func(storePath string) error {
		paths = append(paths, storePath)
		if len(paths) < batch {
			return nil
		}

		return flush()
	})
	if err == nil {
		err = flush()
	}

	if err != nil {
		if ctx.Err() == nil {
			l.log.Error("announcing the cached paths failed", "err", err)
		}

		return
	}

	l.log.Info("announcing the cached paths", "paths", count)
}

// upstreamURLs returns the URLs of the upstreams of store, which the
// mesh probes for Gradient nodes. An upstream added through the API or
// the command line is among them within mesh.DefaultUpstreamCheck.
//
// NOTE: the cache does not report changes of its settings, so the mesh
// polls this list.
func upstreamURLs(store *cache.Store) []string {
	upstreams := store.Settings().Upstreams

	urls := make([]string, 0, len(upstreams))
	for _, up := range upstreams {
		urls = append(urls, up.URL)
	}

	return urls
}

// Status implements web.Mesh.
func (l *meshLink) Status() mesh.Status { return l.node.Status() }

// Peers implements web.Mesh.
func (l *meshLink) Peers() []mesh.PeerInfo { return l.node.Peers() }

// WellKnown implements web.Mesh.
func (l *meshLink) WellKnown() mesh.WellKnown { return l.node.WellKnown() }

// Trust implements web.Mesh. It writes the new federation to a temporary
// file and renames it over the federation file, so a crash leaves the old
// or the new file.
func (l *meshLink) Trust(_ context.Context, req web.MeshTrustRequest) (web.MeshTrustResponse, error) {
	id, err := peer.Decode(req.PeerID)
	if err != nil {
		return web.MeshTrustResponse{}, fmt.Errorf("%w: peer_id %q: %w", federation.ErrInvalid, req.PeerID, err)
	}

	key, err := narinfo.ParsePublicKey(req.Key)
	if err != nil {
		return web.MeshTrustResponse{}, fmt.Errorf("%w: key: %w", federation.ErrInvalid, err)
	}

	org := req.Org
	if org == "" {
		org, _, _ = strings.Cut(req.Key, ":")
	}

	l.trustMu.Lock()
	defer l.trustMu.Unlock()

	fed, err := l.node.Federation().Trust(org, id, key)
	if err != nil {
		return web.MeshTrustResponse{}, err
	}

	data, err := json.MarshalIndent(fed, "", "  ")
	if err != nil {
		return web.MeshTrustResponse{}, err
	}

	if err := writeFileAtomic(l.fedFile, append(data, '\n')); err != nil {
		return web.MeshTrustResponse{}, fmt.Errorf("save federation file %q: %w", l.fedFile, err)
	}

	l.node.SetFederation(fed)
	l.log.Info("trusted a mesh peer", "remote_peer_id", id.String(), "org", org, "key_name", key.Name)

	return web.MeshTrustResponse{Org: org, File: l.fedFile, Members: fed.Members()}, nil
}

// Find implements web.Mesh.
func (l *meshLink) Find(ctx context.Context, storePath string) (web.MeshFindResult, error) {
	if _, _, err := narinfo.SplitStorePath(storePath); err != nil {
		return web.MeshFindResult{}, err
	}

	result := web.MeshFindResult{StorePath: storePath, Providers: []mesh.Provider{}, Building: []web.MeshBuilding{}}

	providers, err := l.node.FindProviders(ctx, storePath)
	switch {
	case err == nil:
		result.Providers = providers
	case !errors.Is(err, mesh.ErrNotFound):
		return web.MeshFindResult{}, err
	}

	switch {
	case strings.HasSuffix(storePath, ".drv"):
		result.DrvPath = storePath
	default:
		if info, err := l.store.NarInfo(ctx, narinfo.HashPart(storePath)); err == nil && info.Deriver != "" {
			result.DrvPath = path.Dir(storePath) + "/" + info.Deriver
		}
	}

	if result.DrvPath != "" {
		for _, b := range l.node.Building(result.DrvPath) {
			result.Building = append(result.Building, web.MeshBuilding{PeerID: peer.ID(b.Peer).String(), ETA: b.ETA})
		}
	}

	return result, nil
}

// writeFileAtomic writes data to a temporary file beside file, syncs it
// and renames it over file.
func writeFileAtomic(file string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return err
	}

	tmp := file + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}

	if err := syncFile(tmp); err != nil {
		os.Remove(tmp)
		return err
	}

	return os.Rename(tmp, file)
}

// buildStarted announces a local build to the mesh. It is safe on a nil
// link.
func (l *meshLink) buildStarted(ctx context.Context, drvPath string, eta time.Duration) {
	if l == nil {
		return
	}

	if err := l.node.StartBuild(ctx, drvPath, eta); err != nil && ctx.Err() == nil {
		l.log.Warn("announcing a build to the mesh failed", "drv_path", drvPath, "err", err)
	}
}

// buildEnded announces the end of a local build to the mesh. outputs
// maps output names to store paths for wire.BuildSucceeded. It is safe on
// a nil link.
func (l *meshLink) buildEnded(ctx context.Context, drvPath string, event wire.BuildEvent, outputs map[string]string) {
	if l == nil {
		return
	}

	if err := l.node.EndBuild(ctx, drvPath, event, outputs); err != nil && ctx.Err() == nil {
		l.log.Warn("announcing the end of a build to the mesh failed", "drv_path", drvPath, "event", string(event), "err", err)
	}
}

// peerETA returns the earliest time a peer that announced it is building
// drvPath expects to finish, or zero when no peer is. It is safe on a nil
// link.
func (l *meshLink) peerETA(drvPath string) time.Time {
	if l == nil {
		return time.Time{}
	}

	builds := l.node.Building(drvPath)
	if len(builds) == 0 {
		return time.Time{}
	}

	return builds[0].ETA
}

// peerBuilding returns the peer ID of the peer that peerETA takes the
// time of, or "" when no peer announced it is building drvPath. It is
// safe on a nil link.
func (l *meshLink) peerBuilding(drvPath string) string {
	if l == nil {
		return ""
	}

	builds := l.node.Building(drvPath)
	if len(builds) == 0 {
		return ""
	}

	return builds[0].Peer
}

// jobETA returns the scheduler's estimate of the job's build time.
func jobETA(a scheduler.Assign) time.Duration {
	return time.Duration(a.Score.BuildSeconds * float64(time.Second))
}

// meshBuildEvent returns how a build with error err ended, for EndBuild:
// only a builder that nix ran and that failed is a failure, and a fault of
// the worker cancels the build.
func meshBuildEvent(err error) wire.BuildEvent {
	switch {
	case err == nil:
		return wire.BuildSucceeded
	case protocol.IsBuildError(err):
		return wire.BuildFailed
	default:
		return wire.BuildCancelled
	}
}

// outputsByName returns the store paths of a build result by output name.
func outputsByName(res protocol.BuildResult) map[string]string {
	outputs := make(map[string]string, len(res.Outputs))
	for name, info := range res.Outputs {
		outputs[name] = info.StorePath
	}

	return outputs
}

// meshPeers adapts the mesh node to cache.Peers.
type meshPeers struct{ link *meshLink }

func (p meshPeers) FetchHashPart(ctx context.Context, hashPart string, sink protocol.NARSink) error {
	from, err := p.link.node.FetchHashPart(ctx, hashPart, sink)
	if errors.Is(err, mesh.ErrNotFound) {
		return fmt.Errorf("%w: %w", cache.ErrNotFound, err)
	}

	if err != nil {
		return err
	}

	p.link.log.Info("fetched a path from a mesh peer for the cache", "hash_part", hashPart, "remote_peer_id", from.String())

	return nil
}

func (p meshPeers) PathsAdded(storePaths ...string) {
	if err := p.link.node.AnnouncePaths(storePaths...); err != nil {
		p.link.log.Warn("announcing paths failed", "err", err)
	}
}

func (p meshPeers) PathsRemoved(storePaths ...string) {
	p.link.node.RemovePaths(storePaths...)
}

// peerBuild hands a peer's build announcement to the Run goroutine. A
// started build of a derivation that an evaluation waits for postpones
// it, and a succeeded one is fetched and then counts as built here. A
// build that failed, was cancelled or lapsed ends the postponement, so the
// derivation is built here at once unless another peer still builds it.
// It is called from the mesh's goroutine.
func (d *driver) peerBuild(ctx context.Context, notice mesh.BuildNotice) {
	switch notice.Event {
	case wire.BuildStarted:
		_ = d.post(ctx, func(ctx context.Context) {
			d.apply(ctx, d.sched.PeerBuilding(notice.DrvPath, notice.ETA, d.now()))
		})
	case wire.BuildFailed, wire.BuildCancelled, mesh.BuildExpired:
		_ = d.post(ctx, func(ctx context.Context) { d.peerBuildEnded(ctx, notice) })
	case wire.BuildSucceeded:
		_ = d.post(ctx, func(ctx context.Context) {
			if !d.wantsDerivation(notice.DrvPath) {
				return
			}

			d.goBackground(func() { d.fetchPeerOutputs(ctx, notice) })
		})
	}
}

// peerBuildEnded ends the postponement of a derivation whose build by a
// peer ended without outputs. The mesh drops the peer's announcement
// before it reports the end, so any build it still lists is another
// peer's, and the derivation then waits for that one instead. Called on
// the Run goroutine.
func (d *driver) peerBuildEnded(ctx context.Context, notice mesh.BuildNotice) {
	if !d.wantsDerivation(notice.DrvPath) {
		return
	}

	if eta := d.mesh.peerETA(notice.DrvPath); !eta.IsZero() {
		d.apply(ctx, d.sched.PeerBuilding(notice.DrvPath, eta, d.now()))
		return
	}

	if st, ok := d.sched.Status(notice.DrvPath); ok && !st.PostponedUntil.IsZero() {
		d.log.Info("a peer's build ended without outputs, so the derivation is built here",
			"drv_path", notice.DrvPath, "remote_peer_id", notice.Peer.String(), "event", string(notice.Event))
	}
	d.apply(ctx, d.sched.PeerGone(notice.DrvPath, d.now()))
}

// wantsDerivation reports whether an active evaluation has an unfinished
// build of drvPath. Called on the Run goroutine.
func (d *driver) wantsDerivation(drvPath string) bool {
	for _, ae := range d.active {
		if b, ok := ae.builds[drvPath]; ok && !b.Status.Finished() {
			return true
		}
	}

	return false
}

// fetchPeerOutputs copies the outputs of a peer's build into the cache
// and then reports the derivation as built to the scheduler. When a fetch
// fails, the derivation stays postponed until its wait runs out, and the
// node builds it then.
func (d *driver) fetchPeerOutputs(ctx context.Context, notice mesh.BuildNotice) {
	for _, out := range notice.Outputs {
		if _, err := d.mesh.node.Fetch(ctx, out, d.cache, notice.Peer); err != nil {
			if ctx.Err() == nil {
				d.log.Warn("fetching the output of a peer's build failed; the derivation is built here when its wait ends",
					"drv_path", notice.DrvPath, "store_path", out, "remote_peer_id", notice.Peer.String(), "err", err)
			}

			return
		}
	}

	_ = d.post(ctx, func(ctx context.Context) {
		now := d.now().UTC()
		d.updateBuilds(notice.DrvPath, func(b *db.Build) {
			// A local job that took the derivation meanwhile keeps it.
			if b.Status == db.BuildBuilding || b.Placement != nil {
				return
			}

			b.Status = db.BuildCached
			b.FinishedAt = &now
			b.Outputs = notice.Outputs
		})
		d.log.Info("derivation built by a mesh peer", "drv_path", notice.DrvPath, "remote_peer_id", notice.Peer.String())
		d.apply(ctx, d.sched.PeerBuilt(notice.DrvPath, d.now()))
	})
}
