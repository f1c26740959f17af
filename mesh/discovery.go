package mesh

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/p2p/discovery/mdns"
	"github.com/libp2p/go-libp2p/p2p/protocol/ping"
)

// mdnsService is the DNS-SD service name under which nodes find each
// other on the local network.
const mdnsService = "_gradient-mesh._udp"

// bootstrapLoop connects to the bootstrap peers and those that AddPeer
// added, at start and whenever the node has no peers, and refreshes the
// DHT's routing table after each round that connected.
func (n *Node) bootstrapLoop(ctx context.Context) {
	bootstrap, _ := parseBootstrap(n.cfg.Bootstrap)
	// closedOnUs is set while every connection to the bootstrap peers
	// ended before the next round, so that it is logged once.
	closedOnUs := false
	connected := 0

	for {
		n.mu.Lock()
		infos := append(slices.Clone(bootstrap), n.extraPeers...)
		n.mu.Unlock()

		alone := len(n.host.Network().Peers()) == 0
		switch {
		case alone && connected > 0 && !closedOnUs:
			// The peers accepted the connection and then closed it,
			// which is what a node does to a peer outside its
			// federation.
			closedOnUs = true
			n.logger.Warn("the bootstrap peers closed every connection this node opened; they may not list it in their federation: on each, run 'gradient mesh trust' with this node's peer ID and cache key",
				"peer_id", n.host.ID().String(), "cache_public_key", n.cfg.CachePublicKey)
		case !alone:
			closedOnUs = false
		}

		if alone && len(infos) > 0 {
			connected = 0

			for _, info := range infos {
				if info.ID == n.host.ID() {
					continue
				}

				dialCtx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout)
				err := n.host.Connect(dialCtx, info)
				cancel()

				if err != nil {
					n.logger.Info("connecting to a bootstrap peer failed", "remote_peer_id", info.ID.String(), "error", err)
					continue
				}

				connected++
			}

			if connected > 0 {
				if err := n.dht.Bootstrap(ctx); err != nil && ctx.Err() == nil {
					n.logger.Warn("refreshing the DHT routing table failed", "error", err)
				}
			}
		}

		select {
		case <-ctx.Done():
			return
		case <-time.After(n.cfg.BootstrapInterval):
		}
	}
}

// pingLoop measures the round-trip time to every connected peer each
// PingInterval. ping.Ping records it in the peerstore, which orders
// candidates.
func (n *Node) pingLoop(ctx context.Context) {
	ticker := time.NewTicker(n.cfg.PingInterval)
	defer ticker.Stop()

	for {
		for _, id := range n.host.Network().Peers() {
			pingCtx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout)
			result := <-ping.Ping(pingCtx, n.host, id)
			cancel()

			if result.Error != nil && ctx.Err() == nil {
				n.logger.Debug("ping failed", "remote_peer_id", id.String(), "error", result.Error)
			}
		}

		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
	}
}

// startMDNS starts multicast DNS discovery and returns a function that
// stops it. Members it finds are connected; other peers are ignored.
func (n *Node) startMDNS() (func(), error) {
	service := mdns.NewMdnsService(n.host, mdnsService, mdnsNotifee{n})
	if err := service.Start(); err != nil {
		return nil, fmt.Errorf("start mDNS: %w", err)
	}

	return func() { service.Close() }, nil
}

type mdnsNotifee struct{ n *Node }

func (m mdnsNotifee) HandlePeerFound(info peer.AddrInfo) {
	n := m.n
	if info.ID == n.host.ID() || !n.Federation().Admits(info.ID) {
		return
	}

	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.DialTimeout)
	defer cancel()

	if err := n.host.Connect(ctx, info); err != nil {
		n.logger.Info("connecting to a peer found by mDNS failed", "remote_peer_id", info.ID.String(), "error", err)
	}
}
