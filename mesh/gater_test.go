package mesh

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/federation"
)

// TestGaterAdmitsOnlyMembers runs real hosts on loopback, over TCP and
// over QUIC, where a pre-shared key would not work.
func TestGaterAdmitsOnlyMembers(t *testing.T) {
	for _, listen := range []string{"/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"} {
		t.Run(listen, func(t *testing.T) {
			keys := make([]crypto.PrivKey, 3)
			ids := make([]peer.ID, 3)
			caches := make([]*memCache, 3)
			for i := range keys {
				var err error
				keys[i], _, err = crypto.GenerateEd25519Key(nil)
				if err != nil {
					t.Fatal(err)
				}
				ids[i], _ = peer.IDFromPrivateKey(keys[i])
				caches[i] = newMemCache(t, fmt.Sprintf("gater%d-1", i))
			}

			member := func(i int) federation.Member {
				return federation.Member{Org: fmt.Sprintf("org%d", i), PeerIDs: []peer.ID{ids[i]}, Keys: []narinfo.PublicKey{caches[i].pub}}
			}
			// A and B are members. The stranger S trusts A, but A does
			// not trust S.
			members, err := federation.New(0, []federation.Member{member(0), member(1)})
			if err != nil {
				t.Fatal(err)
			}
			strangers, err := federation.New(0, []federation.Member{member(0), member(2)})
			if err != nil {
				t.Fatal(err)
			}

			nodes := make([]*Node, 3)
			for i, fed := range []*federation.Federation{members, members, strangers} {
				nodes[i], err = New(Config{PrivateKey: keys[i], Federation: fed, Cache: caches[i], ListenAddrs: []string{listen}, Logger: testLogger(t)})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { nodes[i].Close() })
			}
			a, b, s := nodes[0], nodes[1], nodes[2]

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			aInfo := peer.AddrInfo{ID: a.ID(), Addrs: a.Host().Addrs()}
			if err := b.Host().Connect(ctx, aInfo); err != nil {
				t.Errorf("member B connects to A = %v, want nil", err)
			}
			if err := a.Host().Connect(ctx, peer.AddrInfo{ID: s.ID(), Addrs: s.Host().Addrs()}); err == nil {
				t.Errorf("A connects to stranger S = nil error, want an error")
			}

			// S's dial may finish its side of the handshake before A's
			// gater closes the connection, so check the outcome.
			_ = s.Host().Connect(ctx, aInfo)
			waitFor(t, "A to reject S", func() bool {
				return counterValue(t, a.metrics.rejectedConns) > 0
			})
			waitFor(t, "S's connections to A to close", func() bool {
				return len(s.Host().Network().ConnsToPeer(a.ID())) == 0 && len(a.Host().Network().ConnsToPeer(s.ID())) == 0
			})
			if _, err := s.Fetch(ctx, storePath("anything"), caches[2], a.ID()); err == nil {
				t.Errorf("stranger S fetches from A = nil error, want an error")
			}

			status := a.Status()
			if status.PeerID != a.ID().String() || len(status.Addrs) == 0 {
				t.Errorf("A.Status() = %+v, want its peer ID and addresses", status)
			}
		})
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// syncBuffer is a log destination that tests search while nodes write.
type syncBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) count(s string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Count(b.buf.String(), s)
}

// TestRejectionIsLogged has a stranger bootstrap from a member that does
// not trust it, over QUIC, where the stranger's dial succeeds before the
// member closes the connection. Each side logs it once, at info level or
// above, while the stranger keeps dialling.
func TestRejectionIsLogged(t *testing.T) {
	keys := make([]crypto.PrivKey, 2)
	ids := make([]peer.ID, 2)
	caches := make([]*memCache, 2)
	for i := range keys {
		var err error
		keys[i], _, err = crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		ids[i], _ = peer.IDFromPrivateKey(keys[i])
		caches[i] = newMemCache(t, fmt.Sprintf("reject%d-1", i))
	}
	member := func(i int) federation.Member {
		return federation.Member{Org: fmt.Sprintf("org%d", i), PeerIDs: []peer.ID{ids[i]}, Keys: []narinfo.PublicKey{caches[i].pub}}
	}
	alone, err := federation.New(0, []federation.Member{member(0)})
	if err != nil {
		t.Fatal(err)
	}
	both, err := federation.New(0, []federation.Member{member(0), member(1)})
	if err != nil {
		t.Fatal(err)
	}

	logs := []*syncBuffer{{}, {}}
	newNode := func(i int, fed *federation.Federation, bootstrap []string) *Node {
		n, err := New(Config{
			PrivateKey: keys[i], Federation: fed, Cache: caches[i], ListenAddrs: []string{"/ip4/127.0.0.1/udp/0/quic-v1"},
			Bootstrap: bootstrap, BootstrapInterval: 100 * time.Millisecond,
			Logger: slog.New(slog.NewTextHandler(logs[i], &slog.HandlerOptions{Level: slog.LevelInfo})),
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { n.Close() })
		return n
	}
	a := newNode(0, alone, nil)
	s := newNode(1, both, []string{a.Host().Addrs()[0].String() + "/p2p/" + a.ID().String()})

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	waitFor(t, "A to reject S three times", func() bool { return counterValue(t, a.metrics.rejectedConns) >= 3 })
	waitFor(t, "S to log the closed connections", func() bool { return logs[1].count("the bootstrap peers closed every connection") > 0 })
	if n := logs[0].count("rejected a connection from a peer that is not a federation member"); n != 1 {
		t.Errorf("A logged %d rejections at info level, want 1:\n%s", n, logs[0].buf.String())
	}
	if n := logs[1].count("the bootstrap peers closed every connection"); n != 1 {
		t.Errorf("S logged the closed connections %d times, want 1", n)
	}
}
