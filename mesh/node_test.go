package mesh

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/wire"
	"github.com/gradient-ci/gradient/protocol"
)

func TestFetchFromProvider(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{})
	a, c := m.nodes[0], m.nodes[2]

	p := storePath("hello")
	a.cache.put(p, []byte("the NAR of hello"), nil, a.cache.key)
	if err := a.AnnouncePaths(p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the announcement", func() bool {
		return a.Stats().AnnouncesInFlight == 0 && a.Stats().Paths == 1 && a.metrics.announced != nil && providersOf(c, p) > 0
	})

	providers, err := c.FindProviders(context.Background(), p)
	if err != nil || len(providers) != 1 || providers[0].PeerID != a.ID() {
		t.Fatalf("FindProviders(%s) = %v, %v, want node A", p, providers, err)
	}
	if providers[0].Org != "org0" || !providers[0].LAN {
		t.Errorf("FindProviders(%s)[0] = %+v, want org0 on the LAN", p, providers[0])
	}

	from, err := c.Fetch(context.Background(), p, c.cache)
	if err != nil || from != a.ID() {
		t.Fatalf("Fetch(%s) = %s, %v, want A", p, from, err)
	}
	if got, ok := c.cache.file(p); !ok || string(got) != "the NAR of hello" {
		t.Errorf("C's NAR of %s = %q, %v, want A's", p, got, ok)
	}

	info, err := c.cache.NarInfo(context.Background(), narinfo.HashPart(p))
	if err != nil {
		t.Fatal(err)
	}
	if err := narinfo.Verify(info, []narinfo.PublicKey{c.cache.pub}); err != nil {
		t.Errorf("C's narinfo of %s = %v, want it signed by C's key", p, err)
	}

	// B knows only the hash part, as a cache does for a narinfo request.
	b := m.nodes[1]
	from, err = b.FetchHashPart(context.Background(), narinfo.HashPart(p), b.cache)
	if err != nil || (from != a.ID() && from != c.ID()) {
		t.Fatalf("FetchHashPart(%s) = %s, %v, want A or C", narinfo.HashPart(p), from, err)
	}
	if got, ok := b.cache.file(p); !ok || string(got) != "the NAR of hello" {
		t.Errorf("B's NAR of %s = %q, %v, want A's", p, got, ok)
	}
	if _, err := b.FetchHashPart(context.Background(), "not-a-hash-part", b.cache); !errors.Is(err, narinfo.ErrInvalidStorePath) {
		t.Errorf("FetchHashPart(invalid) = %v, want ErrInvalidStorePath", err)
	}
}

func providersOf(n *testNode, storePath string) int {
	providers, _ := n.FindProviders(context.Background(), storePath)
	return len(providers)
}

func TestFetchUnknownPathIsNotFound(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	c := m.nodes[1]
	c.cfg.LookupTimeout = 200 * time.Millisecond

	start := time.Now()
	_, err := c.Fetch(context.Background(), storePath("nobody-has-it"), c.cache)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch(unknown path) = %v, want ErrNotFound", err)
	}
	if elapsed := time.Since(start); elapsed > 2*time.Second {
		t.Errorf("Fetch(unknown path) took %s, want about the lookup timeout of 200ms", elapsed)
	}
	if _, err := c.FindProviders(context.Background(), "/nix/store/not-a-path"); !errors.Is(err, narinfo.ErrInvalidStorePath) {
		t.Errorf("FindProviders(invalid path) = %v, want ErrInvalidStorePath", err)
	}
}

func TestFetchSkipsTamperedNAR(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{})
	a, bad, c := m.nodes[0], m.nodes[1], m.nodes[2]

	p := storePath("tampered")
	a.cache.put(p, []byte("good bytes"), nil, a.cache.key)
	bad.cache.put(p, []byte("good bytes"), nil, bad.cache.key)
	bad.cache.tamper(p)
	if err := a.AnnouncePaths(p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "A's announcement", func() bool { return providersOf(c, p) > 0 })

	// The bad peer is tried first, as a hint.
	from, err := c.Fetch(context.Background(), p, c.cache, bad.ID())
	if err != nil || from != a.ID() {
		t.Fatalf("Fetch(%s, hint bad peer) = %s, %v, want A", p, from, err)
	}
	if got, _ := c.cache.file(p); string(got) != "good bytes" {
		t.Errorf("C's NAR of %s = %q, want the good bytes", p, got)
	}
	// A's signature goes along, so clients that trust A can check C's copy.
	if sigs := c.cache.receivedSignatures(p); len(sigs) != 1 || !strings.HasPrefix(sigs[0], a.cache.pub.Name+":") {
		t.Errorf("signatures passed to C's cache = %q, want A's one", sigs)
	}
	if n := c.Stats().BlockedPeers; n != 1 {
		t.Errorf("C's BlockedPeers = %d, want 1", n)
	}

	// A blocked peer is no candidate any more.
	if ranked := c.rank([]peer.ID{bad.ID(), a.ID()}); len(ranked) != 1 || ranked[0].Peer != string(a.ID()) {
		t.Errorf("rank(bad, A) = %v, want only A", ranked)
	}
}

func TestFetchRejectsNonMemberSignature(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	a, c := m.nodes[0], m.nodes[1]

	stranger := newMemCache(t, "stranger-1")
	p := storePath("unsigned")
	a.cache.put(p, []byte("bytes"), nil, stranger.key)

	_, err := c.Fetch(context.Background(), p, c.cache, a.ID())
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch(path signed by a stranger) = %v, want ErrNotFound", err)
	}
	if _, ok := c.cache.file(p); ok {
		t.Errorf("C stored %s, want nothing stored", p)
	}
	if n := c.Stats().BlockedPeers; n != 1 {
		t.Errorf("C's BlockedPeers = %d, want 1", n)
	}
}

func TestFetchStopsOnSinkError(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	a, c := m.nodes[0], m.nodes[1]

	p := storePath("sink-fails")
	a.cache.put(p, []byte("bytes"), nil, a.cache.key)

	_, err := c.Fetch(context.Background(), p, failingSink{}, a.ID())
	if !errors.Is(err, errSink) || errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch(failing sink) = %v, want the sink's error", err)
	}
	if n := c.Stats().BlockedPeers; n != 0 {
		t.Errorf("C's BlockedPeers = %d, want 0: the peer did nothing wrong", n)
	}
}

type failingSink struct{}

func (failingSink) HasPath(context.Context, string) (bool, error) { return false, nil }

func (failingSink) PutNAR(context.Context, protocol.PathInfo, io.Reader) error {
	return errors.New("disk full")
}

func TestBuildAnnouncements(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{})
	a, b := m.nodes[0], m.nodes[1]
	drv := storePath("hello.drv")
	out := storePath("hello")

	before := time.Now()
	if err := a.StartBuild(context.Background(), drv, 10*time.Minute); err != nil {
		t.Fatal(err)
	}

	notice := b.nextBuild(t, drv)
	if notice.Event != wire.BuildStarted || notice.Peer != a.ID() {
		t.Errorf("B's notice = %+v, want started by A", notice)
	}
	if eta := notice.ETA.Sub(before); eta < 10*time.Minute || eta > 11*time.Minute {
		t.Errorf("B's notice ETA = start + %s, want about 10m", eta)
	}
	if building := b.Building(drv); len(building) != 1 || building[0].Peer != string(a.ID()) {
		t.Errorf("B.Building(%s) = %v, want A", drv, building)
	}

	if err := a.EndBuild(context.Background(), drv, wire.BuildSucceeded, map[string]string{"out": out}); err != nil {
		t.Fatal(err)
	}
	notice = b.nextBuild(t, drv)
	if notice.Event != wire.BuildSucceeded || notice.Outputs["out"] != out {
		t.Errorf("B's notice = %+v, want succeeded with output %s", notice, out)
	}
	if building := b.Building(drv); len(building) != 0 {
		t.Errorf("B.Building(%s) after the end = %v, want none", drv, building)
	}

	if err := a.EndBuild(context.Background(), drv, wire.BuildStarted, nil); err == nil {
		t.Errorf("EndBuild(started) = nil error, want an error")
	}
}

func TestBuildAnnouncementLapsesWhenPeerStops(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{buildTTL: 3 * time.Second})
	a, b := m.nodes[0], m.nodes[1]
	drv := storePath("long.drv")

	if err := a.StartBuild(context.Background(), drv, time.Hour); err != nil {
		t.Fatal(err)
	}
	if notice := b.nextBuild(t, drv); notice.Event != wire.BuildStarted {
		t.Fatalf("B's notice = %+v, want started", notice)
	}

	a.stop()

	for {
		notice := b.nextBuild(t, drv)
		if notice.Event == BuildExpired {
			break
		}
		if notice.Event != wire.BuildStarted {
			t.Fatalf("B's notice = %+v, want a refresh or expired", notice)
		}
	}
	if building := b.Building(drv); len(building) != 0 {
		t.Errorf("B.Building(%s) after A stopped = %v, want none", drv, building)
	}
}

func TestNonMemberIsIgnored(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{members: 2})
	a, stranger := m.nodes[0], m.nodes[2]
	drv := storePath("from-stranger.drv")

	p := storePath("secret")
	a.cache.put(p, []byte("bytes"), nil, a.cache.key)

	// Mocknet hosts have no connection gater, so this checks the NAR
	// handler's own membership check.
	if _, err := stranger.Fetch(context.Background(), p, stranger.cache, a.ID()); err == nil {
		t.Errorf("stranger's Fetch from A = nil error, want an error")
	}

	if err := stranger.StartBuild(context.Background(), drv, time.Minute); err != nil {
		t.Fatal(err)
	}
	// A member's announcement after the stranger's arrives; the
	// stranger's never does.
	member := storePath("from-member.drv")
	if err := m.nodes[1].StartBuild(context.Background(), member, time.Minute); err != nil {
		t.Fatal(err)
	}
	for {
		notice := a.nextBuild(t, member)
		if notice.DrvPath == member {
			break
		}
	}
	if building := a.Building(drv); len(building) != 0 {
		t.Errorf("A.Building(stranger's drv) = %v, want none", building)
	}
}

func TestAnnouncePathsRejectsInvalidPath(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	if err := m.nodes[0].AnnouncePaths(storePath("ok"), "relative/path"); !errors.Is(err, narinfo.ErrInvalidStorePath) {
		t.Errorf("AnnouncePaths(invalid) = %v, want ErrInvalidStorePath", err)
	}
	if n := m.nodes[0].Stats().Paths; n != 0 {
		t.Errorf("Paths after a rejected call = %d, want 0", n)
	}
}

// TestTrustLiftsBlocks checks that a member blocked because its narinfos
// were signed by a key the federation lacked is tried again once the key
// is trusted, while a member blocked for tampered bytes stays blocked.
func TestTrustLiftsBlocks(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{})
	a, bad, c := m.nodes[0], m.nodes[1], m.nodes[2]

	other := newMemCache(t, "a-other-1")
	p := storePath("new-key")
	a.cache.put(p, []byte("bytes"), nil, other.key)
	if _, err := c.Fetch(context.Background(), p, c.cache, a.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch(path signed by an unknown key) = %v, want ErrNotFound", err)
	}
	tampered := storePath("tampered")
	bad.cache.put(tampered, []byte("good bytes"), nil, bad.cache.key)
	bad.cache.tamper(tampered)
	if _, err := c.Fetch(context.Background(), tampered, c.cache, bad.ID()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Fetch(tampered path) = %v, want ErrNotFound", err)
	}
	if n := c.Stats().BlockedPeers; n != 2 {
		t.Fatalf("C's BlockedPeers = %d, want 2", n)
	}

	org, _ := c.Federation().OrgOf(a.ID())
	if _, err := c.Trust(org, a.ID(), other.pub); err != nil {
		t.Fatal(err)
	}
	if n := c.Stats().BlockedPeers; n != 1 {
		t.Errorf("C's BlockedPeers after trusting the key = %d, want 1, the tampering peer", n)
	}
	if from, err := c.Fetch(context.Background(), p, c.cache, a.ID()); err != nil || from != a.ID() {
		t.Errorf("Fetch after trusting the key = %s, %v, want A", from, err)
	}
	if ranked := c.rank([]peer.ID{bad.ID()}); len(ranked) != 0 {
		t.Errorf("rank(tampering peer) after the key change = %v, want it still blocked", ranked)
	}
}
