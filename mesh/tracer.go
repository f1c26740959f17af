package mesh

import (
	"sync"

	pubsub "github.com/libp2p/go-libp2p-pubsub"
	pb "github.com/libp2p/go-libp2p-pubsub/pb"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/mesh/wire"
)

// meshTracer follows GRAFT and PRUNE events to know which peers are in
// this node's GossipSub mesh for the builds topic. A message published
// before the mesh formed reaches only the peers whose streams are open,
// so tests and diagnostics wait for the mesh.
type meshTracer struct {
	// mu guards peers.
	mu    sync.Mutex
	peers map[peer.ID]bool
}

var _ pubsub.EventTracer = (*meshTracer)(nil)

func (t *meshTracer) Trace(evt *pb.TraceEvent) {
	switch evt.GetType() {
	case pb.TraceEvent_GRAFT:
		t.set(evt.GetGraft().GetPeerID(), evt.GetGraft().GetTopic(), true)
	case pb.TraceEvent_PRUNE:
		t.set(evt.GetPrune().GetPeerID(), evt.GetPrune().GetTopic(), false)
	}
}

func (t *meshTracer) set(id []byte, topic string, in bool) {
	if topic != wire.BuildsTopic {
		return
	}

	t.mu.Lock()
	defer t.mu.Unlock()

	if t.peers == nil {
		t.peers = map[peer.ID]bool{}
	}

	if in {
		t.peers[peer.ID(id)] = true
	} else {
		delete(t.peers, peer.ID(id))
	}
}

// len returns the number of peers in the builds topic's mesh.
func (t *meshTracer) len() int {
	t.mu.Lock()
	defer t.mu.Unlock()

	return len(t.peers)
}
