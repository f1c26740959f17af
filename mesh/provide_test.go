package mesh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	kb "github.com/libp2p/go-libp2p-kbucket"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/mesh/wire"
)

func TestMemberKeysClosest(t *testing.T) {
	tests := []struct {
		name    string
		members int
	}{
		{"no other member", 0},
		{"one member", 1},
		{"fewer than replication", 7},
		{"more than replication", 3 * replication},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			self := newPeerID(t)
			ids := make([]peer.ID, tt.members)
			for i := range ids {
				ids[i] = newPeerID(t)
			}

			m := newMemberKeys(newFederation(t, append([]peer.ID{self}, ids...)), self)

			for i := range 5 {
				key := wire.PathKey(narinfo.HashPart(storePath(fmt.Sprintf("path-%d", i)))).Hash()
				target := kb.ConvertKey(string(key))

				got := m.closest(target)
				want := kb.SortClosestPeers(ids, target)
				if !slices.Equal(got, want) {
					t.Errorf("closest(key %d) = %v, want %v", i, got, want)
				}
				if slices.Contains(got, self) {
					t.Errorf("closest(key %d) contains the node itself", i)
				}
			}
		})
	}
}

func TestProvideSkipsUnreachableMember(t *testing.T) {
	m := newTestMesh(t, 4, meshOptions{})
	a := m.nodes[0]

	// The ghost is a member without a running node, so no lookup finds
	// an address for it.
	ghost := newPeerID(t)
	_, ghostKey, err := narinfo.GenerateKey("ghost-1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Trust("ghost", ghost, ghostKey); err != nil {
		t.Fatal(err)
	}

	p := storePath("hello")
	if err := a.provide(context.Background(), narinfo.HashPart(p)); err != nil {
		t.Fatalf("provide(%s) = %v, want nil", p, err)
	}

	// ADD_PROVIDER is a message without a response, so a peer may store
	// the record a moment after provide returned.
	key := wire.PathKey(narinfo.HashPart(p)).Hash()
	for i, tn := range m.nodes {
		var providers []peer.AddrInfo
		waitFor(t, fmt.Sprintf("node %d to store the record", i), func() bool {
			var err error
			providers, err = tn.dht.ProviderStore().GetProviders(context.Background(), key)
			return err == nil && len(providers) > 0
		})
		if len(providers) != 1 || providers[0].ID != a.ID() {
			t.Errorf("node %d stores providers %v for %s, want node A", i, providers, p)
		}
	}

	a.resolveMu.Lock()
	_, failed := a.resolveFailed[ghost]
	a.resolveMu.Unlock()
	if !failed {
		t.Errorf("resolveFailed has no entry for the unreachable member")
	}

	// A second record skips the ghost without a lookup.
	start := time.Now()
	if err := a.provide(context.Background(), narinfo.HashPart(storePath("second"))); err != nil {
		t.Fatalf("provide(second) = %v, want nil", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("provide(second) took %s, want it to skip the unreachable member", elapsed)
	}
}

func TestProvideFailsWithoutReachableMember(t *testing.T) {
	m := newTestMesh(t, 1, meshOptions{noConnect: true})
	a := m.nodes[0]

	for i := range 3 {
		_, key, err := narinfo.GenerateKey(fmt.Sprintf("ghost%d-1", i))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Trust(fmt.Sprintf("ghost%d", i), newPeerID(t), key); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	err := a.provide(ctx, narinfo.HashPart(storePath("hello")))
	if !errors.Is(err, errNoPeerStored) {
		t.Errorf("provide(hello) = %v, want errNoPeerStored", err)
	}
}

func TestProvideFailsWithoutOtherMember(t *testing.T) {
	m := newTestMesh(t, 1, meshOptions{noConnect: true})

	err := m.nodes[0].provide(context.Background(), narinfo.HashPart(storePath("hello")))
	if !errors.Is(err, errNoPeerStored) {
		t.Errorf("provide(hello) = %v, want errNoPeerStored", err)
	}
}

// newFederation returns a federation with one organisation per peer.
func newFederation(t *testing.T, ids []peer.ID) *federation.Federation {
	t.Helper()

	members := make([]federation.Member, len(ids))
	for i, id := range ids {
		_, key, err := narinfo.GenerateKey(fmt.Sprintf("org%d-1", i))
		if err != nil {
			t.Fatal(err)
		}
		members[i] = federation.Member{Org: fmt.Sprintf("org%d", i), PeerIDs: []peer.ID{id}, Keys: []narinfo.PublicKey{key}}
	}

	f, err := federation.New(time.Hour, members)
	if err != nil {
		t.Fatal(err)
	}

	return f
}
