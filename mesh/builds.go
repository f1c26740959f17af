package mesh

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/mesh/progress"
	"github.com/gradient-ci/gradient/mesh/wire"
)

// BuildNotice is a peer's build announcement as Config.OnBuild receives
// it.
type BuildNotice struct {
	// Peer is the node that builds the derivation.
	Peer peer.ID
	// DrvPath is the store path of the derivation.
	DrvPath string
	// Event is BuildStarted for a new or refreshed build, or how it
	// ended: BuildSucceeded, BuildFailed, BuildCancelled, or
	// BuildExpired when the peer stopped refreshing it.
	Event wire.BuildEvent
	// ETA is when the peer expects the build to end, for BuildStarted.
	ETA time.Time
	// Outputs maps output names to store paths, for BuildSucceeded.
	// Fetch them with Fetch and Peer as a hint.
	Outputs map[string]string
}

// BuildExpired is the Event of a BuildNotice for a build whose
// announcement lapsed without an end, such as when the peer vanished.
const BuildExpired wire.BuildEvent = "expired"

// StartBuild announces that this node started building drvPath and
// expects it done after eta. The node refreshes the announcement until
// EndBuild, so it lapses within Config.BuildTTL if the node stops.
func (n *Node) StartBuild(ctx context.Context, drvPath string, eta time.Duration) error {
	eta = max(eta, 0)
	now := n.cfg.Now()

	n.mu.Lock()
	n.ownBuilds[drvPath] = now.Add(eta)
	n.mu.Unlock()

	err := n.publish(ctx, wire.BuildMessage{Event: wire.BuildStarted, DrvPath: drvPath, ETA: eta, TTL: n.cfg.BuildTTL})
	if err != nil {
		n.mu.Lock()
		delete(n.ownBuilds, drvPath)
		n.mu.Unlock()

		return fmt.Errorf("announce build of %q: %w", drvPath, err)
	}

	return nil
}

// EndBuild announces that this node's build of drvPath ended with event:
// wire.BuildSucceeded with the output paths, which the node should also
// pass to AnnouncePaths, or wire.BuildFailed or wire.BuildCancelled.
func (n *Node) EndBuild(ctx context.Context, drvPath string, event wire.BuildEvent, outputs map[string]string) error {
	if event == wire.BuildStarted {
		return fmt.Errorf("end build of %q: event %q does not end a build", drvPath, event)
	}

	n.mu.Lock()
	delete(n.ownBuilds, drvPath)
	n.mu.Unlock()

	err := n.publish(ctx, wire.BuildMessage{Event: event, DrvPath: drvPath, Outputs: outputs})
	if err != nil {
		return fmt.Errorf("announce end of build of %q: %w", drvPath, err)
	}

	return nil
}

func (n *Node) publish(ctx context.Context, m wire.BuildMessage) error {
	data, err := wire.EncodeBuild(m)
	if err != nil {
		return err
	}

	return n.topic.Publish(ctx, data)
}

// validateBuildMessage accepts a GossipSub message only from a member
// author and only when it decodes, so GossipSub neither delivers nor
// forwards anything else and penalises the peer that sent it.
func (n *Node) validateBuildMessage(_ context.Context, from peer.ID, msg *pubsub.Message) bool {
	author := msg.GetFrom()

	if author != n.host.ID() && !n.Federation().Admits(author) {
		n.logger.Warn("dropped a build announcement from a non-member", "remote_peer_id", from.String(), "author", author.String())
		return false
	}

	m, err := wire.DecodeBuild(msg.Data)
	if err != nil {
		n.logger.Warn("dropped an invalid build announcement", "remote_peer_id", from.String(), "author", author.String(), "error", err)
		return false
	}

	msg.ValidatorData = m

	return true
}

// readBuilds records peers' build announcements on the board and passes
// them to Config.OnBuild.
func (n *Node) readBuilds(ctx context.Context, sub *pubsub.Subscription) {
	for {
		msg, err := sub.Next(ctx)
		if err != nil {
			return
		}

		author := msg.GetFrom()
		if author == n.host.ID() {
			continue
		}

		m, ok := msg.ValidatorData.(wire.BuildMessage)
		if !ok {
			continue
		}

		n.recordBuild(author, m)
	}
}

func (n *Node) recordBuild(author peer.ID, m wire.BuildMessage) {
	now := n.cfg.Now()
	notice := BuildNotice{Peer: author, DrvPath: m.DrvPath, Event: m.Event}

	n.mu.Lock()
	switch m.Event {
	case wire.BuildStarted:
		notice.ETA = now.Add(m.ETA)
		n.board.Start(progress.Build{DrvPath: m.DrvPath, Peer: string(author), ETA: notice.ETA, Expires: now.Add(m.TTL)}, now)
	default:
		n.board.End(string(author), m.DrvPath, outcome(m.Event))
		notice.Outputs = m.Outputs
	}
	n.mu.Unlock()

	n.logger.Debug("peer build announcement", "remote_peer_id", author.String(), "drv_path", m.DrvPath, "event", string(m.Event))
	n.notify(notice)
}

func outcome(event wire.BuildEvent) progress.Outcome {
	switch event {
	case wire.BuildSucceeded:
		return progress.Built
	case wire.BuildFailed:
		return progress.Failed
	}

	return progress.Cancelled
}

func (n *Node) notify(notice BuildNotice) {
	if n.cfg.OnBuild != nil {
		n.cfg.OnBuild(notice)
	}
}

// buildLoop refreshes the announcements of local builds every BuildTTL/3
// and expires peers' builds whose announcements lapsed.
func (n *Node) buildLoop(ctx context.Context) {
	ticker := time.NewTicker(n.cfg.BuildTTL / 3)
	defer ticker.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}

		now := n.cfg.Now()

		n.mu.Lock()
		expired := n.board.Expire(now)
		own := maps.Clone(n.ownBuilds)
		n.mu.Unlock()

		for _, e := range expired {
			n.logger.Info("peer build announcement lapsed", "remote_peer_id", peer.ID(e.Peer).String(), "drv_path", e.DrvPath)
			n.notify(BuildNotice{Peer: peer.ID(e.Peer), DrvPath: e.DrvPath, Event: BuildExpired})
		}

		for _, drvPath := range slices.Sorted(maps.Keys(own)) {
			m := wire.BuildMessage{Event: wire.BuildStarted, DrvPath: drvPath, ETA: max(own[drvPath].Sub(now), 0), TTL: n.cfg.BuildTTL}
			if err := n.publish(ctx, m); err != nil && ctx.Err() == nil {
				n.logger.Warn("refreshing a build announcement failed", "drv_path", drvPath, "error", err)
			}
		}
	}
}
