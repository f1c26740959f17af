package mesh

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	manet "github.com/multiformats/go-multiaddr/net"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/candidate"
	"github.com/gradient-ci/gradient/mesh/progress"
	"github.com/gradient-ci/gradient/mesh/wire"
)

// Provider is a peer that announced it holds a store path.
type Provider struct {
	PeerID peer.ID `json:"peer_id"`
	// Org is the peer's organisation in the federation.
	Org string `json:"org"`
	// LAN is true when the peer has a loopback or private address.
	LAN bool `json:"lan"`
	// RTT is the measured round-trip time, zero when not measured yet.
	RTT time.Duration `json:"rtt_ns"`
}

// FindProviders looks up the peers that provide storePath, waiting at
// most Config.LookupTimeout, see findProviderIDs. It returns
// them nearest first, without this node, non-members and blocked peers.
// It returns an error wrapping ErrNotFound when there are none; a lookup
// that timed out without a result counts as none.
func (n *Node) FindProviders(ctx context.Context, storePath string) ([]Provider, error) {
	_, base, err := narinfo.SplitStorePath(storePath)
	if err != nil {
		return nil, fmt.Errorf("find providers of %q: %w", storePath, err)
	}

	ids := n.findProviderIDs(ctx, narinfo.HashPart(base))
	if len(ids) == 0 {
		return nil, fmt.Errorf("find providers of %q: %w", storePath, ErrNotFound)
	}

	f := n.Federation()
	providers := make([]Provider, 0, len(ids))

	for _, c := range n.rank(ids) {
		org, _ := f.OrgOf(peer.ID(c.Peer))
		providers = append(providers, Provider{PeerID: peer.ID(c.Peer), Org: org, LAN: c.LAN, RTT: c.RTT})
	}

	if len(providers) == 0 {
		return nil, fmt.Errorf("find providers of %q: only blocked peers: %w", storePath, ErrNotFound)
	}

	return providers, nil
}

// findProviderIDs returns the member peers other than this node that the
// DHT lists as providers of hashPart. It waits at most LookupTimeout, and
// after the first provider at most a quarter of it for more, because a
// DHT lookup for a rare path runs on until it has asked the closest
// peers.
func (n *Node) findProviderIDs(ctx context.Context, hashPart string) []peer.ID {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LookupTimeout)
	defer cancel()

	f := n.Federation()
	results := n.dht.FindProvidersAsync(ctx, wire.PathKey(hashPart), n.cfg.MaxProviders+1)

	var (
		ids   []peer.ID
		grace <-chan time.Time
	)

	for {
		select {
		case <-grace:
			return ids
		case info, ok := <-results:
			if !ok {
				return ids
			}

			if info.ID == n.host.ID() || !f.Admits(info.ID) || slices.Contains(ids, info.ID) {
				continue
			}

			ids = append(ids, info.ID)

			if len(ids) >= n.cfg.MaxProviders {
				return ids
			}

			if grace == nil {
				timer := time.NewTimer(n.cfg.LookupTimeout / 4)
				defer timer.Stop()
				grace = timer.C
			}
		}
	}
}

// rank returns ids as candidates, without blocked peers, nearest first.
func (n *Node) rank(ids []peer.ID) []candidate.Candidate {
	candidates := make([]candidate.Candidate, 0, len(ids))
	for _, id := range ids {
		candidates = append(candidates, n.candidate(id))
	}

	now := n.cfg.Now()

	n.mu.Lock()
	candidates = n.blocklist.Filter(candidates, now)
	n.mu.Unlock()

	candidate.Order(candidates)

	return candidates
}

// candidate describes id with the addresses and round-trip time that the
// peerstore records for it.
func (n *Node) candidate(id peer.ID) candidate.Candidate {
	c := candidate.Candidate{Peer: string(id), RTT: n.host.Peerstore().LatencyEWMA(id)}

	addrs := n.host.Peerstore().Addrs(id)
	for _, conn := range n.host.Network().ConnsToPeer(id) {
		addrs = append(addrs, conn.RemoteMultiaddr())
	}

	for _, addr := range addrs {
		if manet.IsPrivateAddr(addr) || manet.IsIPLoopback(addr) {
			c.LAN = true
			break
		}
	}

	return c
}

// Building returns the peers that announced they are building drvPath,
// the earliest ETA first. It reads the local board of announcements and
// sends nothing.
func (n *Node) Building(drvPath string) []progress.Build {
	now := n.cfg.Now()

	n.mu.Lock()
	defer n.mu.Unlock()

	return n.board.Building(drvPath, now)
}
