package mesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p-kad-dht/amino"
	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	"github.com/multiformats/go-multihash"

	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/mesh/wire"
)

// replication is the number of peers that store each provider record:
// kad-dht's default bucket size k, which New does not change, so lookups
// by other nodes end at the same peers.
const replication = amino.DefaultBucketSize

// resolveRetry is how long a member whose addresses could not be found is
// left out of the record holders before the node looks for it again.
const resolveRetry = time.Minute

// errNoPeerStored is returned by provide when the record reached no
// member. ADD_PROVIDER has no response, so "reached" means sent.
var errNoPeerStored = errors.New("the provider record reached no federation member")

// provide publishes the provider record of one store path. kad-dht's
// Provide finds the k closest peers with a network lookup for every key,
// about 30 requests per key in the 200-node simulation. The federation lists every peer
// that may run the DHT, so the node computes the closest members itself
// and sends only the k ADD_PROVIDER messages. It skips members it cannot
// reach, so the records land on the k closest reachable members, the
// peers that other nodes' lookups for the key end at.
func (n *Node) provide(ctx context.Context, hashPart string) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.AnnounceTimeout)
	defer cancel()

	key := wire.PathKey(hashPart).Hash()

	// A lookup that reaches this node finds the record in its own store.
	self := peer.AddrInfo{ID: n.host.ID()}
	if err := n.dht.ProviderStore().AddProvider(ctx, key, self); err != nil {
		return fmt.Errorf("store provider record %q: %w", hashPart, err)
	}

	stored, err := n.putProviderRecords(ctx, key, n.closestMembers(key))
	if stored == 0 {
		return fmt.Errorf("publish provider record %q: %w", hashPart, errors.Join(errNoPeerStored, err))
	}

	return nil
}

// putProviderRecords sends the provider record of key to the first
// replication peers of candidates it can be sent to, going down the list
// past each peer that fails. It returns the number of peers it was sent to
// and the last error.
func (n *Node) putProviderRecords(ctx context.Context, key multihash.Multihash, candidates []peer.ID) (int, error) {
	self := peer.AddrInfo{ID: n.host.ID(), Addrs: n.dht.FilteredAddrs()}

	var (
		mu      sync.Mutex
		next    int
		stored  int
		lastErr error
	)

	take := func() (peer.ID, bool) {
		mu.Lock()
		defer mu.Unlock()

		if next == len(candidates) || ctx.Err() != nil {
			return "", false
		}
		next++

		return candidates[next-1], true
	}

	// Each goroutine stops after one peer got the record, so at most
	// replication peers get it.
	var wg sync.WaitGroup
	for range min(replication, len(candidates)) {
		wg.Go(func() {
			for {
				id, ok := take()
				if !ok {
					return
				}

				err := n.resolveMember(ctx, id)
				if err == nil {
					err = n.messenger.PutProviderAddrs(ctx, id, key, self)
				}

				mu.Lock()
				if err == nil {
					stored++
				} else {
					lastErr = fmt.Errorf("peer %s: %w", id, err)
				}
				mu.Unlock()

				if err == nil {
					return
				}
			}
		})
	}
	wg.Wait()

	if lastErr == nil && len(candidates) == 0 {
		lastErr = errors.New("the federation has no other member")
	}

	return stored, lastErr
}

// resolveMember returns nil when the node is connected to id or has an
// address of it in the peerstore. Otherwise it looks the peer up in the
// DHT. Concurrent callers wait for the same lookup, and after a failed
// lookup the peer is not looked up again for resolveRetry.
func (n *Node) resolveMember(ctx context.Context, id peer.ID) error {
	if n.host.Network().Connectedness(id) == network.Connected || len(n.host.Peerstore().Addrs(id)) > 0 {
		return nil
	}

	n.resolveMu.Lock()
	if failed, ok := n.resolveFailed[id]; ok && n.cfg.Now().Sub(failed) < resolveRetry {
		n.resolveMu.Unlock()
		return fmt.Errorf("no address known, and looking it up failed at %s", failed.Format(time.RFC3339))
	}

	done, running := n.resolving[id]
	if !running {
		done = make(chan struct{})
		n.resolving[id] = done
	}
	n.resolveMu.Unlock()

	if running {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}

		if len(n.host.Peerstore().Addrs(id)) == 0 {
			return errors.New("no address known or found")
		}

		return nil
	}

	info, err := n.dht.FindPeer(ctx, id)
	if err == nil && len(info.Addrs) == 0 {
		err = errors.New("the DHT returned no address")
	}
	if err == nil {
		n.host.Peerstore().AddAddrs(id, info.Addrs, peerstore.AddressTTL)
	}

	n.resolveMu.Lock()
	delete(n.resolving, id)
	if err != nil {
		n.resolveFailed[id] = n.cfg.Now()
	} else {
		delete(n.resolveFailed, id)
	}
	n.resolveMu.Unlock()
	close(done)

	if err != nil {
		return fmt.Errorf("find addresses: %w", err)
	}

	return nil
}

// closestMembers returns the federation's peers other than this node,
// closest to the DHT key first by Kademlia's XOR distance.
func (n *Node) closestMembers(key multihash.Multihash) []peer.ID {
	members := n.memberKeys.Load()
	if f := n.Federation(); members == nil || members.federation != f {
		members = newMemberKeys(f, n.host.ID())
		n.memberKeys.Store(members)
	}

	return members.closest(kb.ConvertKey(string(key)))
}

// memberKeys contains the Kademlia IDs of a federation's peers, which are
// SHA-256 hashes of the peer IDs, so that they are hashed once per
// federation and not once per key.
type memberKeys struct {
	federation *federation.Federation
	ids        []peer.ID
	kadIDs     []kb.ID
}

// newMemberKeys returns the keys of f's peers except self.
func newMemberKeys(f *federation.Federation, self peer.ID) *memberKeys {
	m := &memberKeys{federation: f}

	for _, id := range f.PeerIDs() {
		if id == self {
			continue
		}

		m.ids = append(m.ids, id)
		m.kadIDs = append(m.kadIDs, kb.ConvertPeerID(id))
	}

	return m
}

// closest returns the peers sorted by XOR distance to target, a Kademlia
// ID, closest first.
func (m *memberKeys) closest(target kb.ID) []peer.ID {
	type distance struct {
		id       peer.ID
		distance [32]byte
	}

	distances := make([]distance, len(m.ids))
	for i, kadID := range m.kadIDs {
		distances[i].id = m.ids[i]
		for j := range distances[i].distance {
			distances[i].distance[j] = kadID[j] ^ target[j]
		}
	}

	slices.SortFunc(distances, func(a, b distance) int { return bytes.Compare(a.distance[:], b.distance[:]) })

	ids := make([]peer.ID, len(distances))
	for i, d := range distances {
		ids[i] = d.id
	}

	return ids
}
