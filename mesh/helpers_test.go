package mesh

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"sync"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/protocol"
)

// memCache is an in-memory binary cache with uncompressed NAR files. It
// implements Cache and protocol.NARSink.
type memCache struct {
	key narinfo.SecretKey
	pub narinfo.PublicKey

	mu    sync.Mutex
	infos map[string]*narinfo.NarInfo
	files map[string][]byte
	// receivedSigs holds the signatures that PutNAR received, by store path.
	receivedSigs map[string][]string
}

func newMemCache(t testing.TB, name string) *memCache {
	t.Helper()
	sk, pk, err := narinfo.GenerateKey(name)
	if err != nil {
		t.Fatal(err)
	}
	return &memCache{key: sk, pub: pk, infos: map[string]*narinfo.NarInfo{}, files: map[string][]byte{}}
}

func (c *memCache) NarInfo(_ context.Context, hashPart string) (*narinfo.NarInfo, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.infos[hashPart]
	if !ok {
		return nil, fmt.Errorf("read narinfo %q: %w", hashPart, cache.ErrNotFound)
	}
	copied := *info
	return &copied, nil
}

func (c *memCache) OpenNAR(_ context.Context, url string) (io.ReadCloser, int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	data, ok := c.files[url]
	if !ok {
		return nil, 0, fmt.Errorf("open NAR %q: %w", url, cache.ErrNotFound)
	}
	return io.NopCloser(bytes.NewReader(data)), int64(len(data)), nil
}

func (c *memCache) HasPath(_ context.Context, storePath string) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.infos[narinfo.HashPart(storePath)]
	return ok, nil
}

// PutNAR checks the references, reads the NAR, checks it as cache.Store
// does and stores it signed by c's key.
func (c *memCache) PutNAR(_ context.Context, info protocol.PathInfo, nar io.Reader) error {
	data, err := io.ReadAll(io.LimitReader(nar, int64(info.NarSize)+1))
	if err != nil {
		return err
	}
	want, err := narinfo.ParseHash(info.NarHash)
	if err != nil {
		return err
	}
	sum := sha256.Sum256(data)
	if uint64(len(data)) != info.NarSize || !bytes.Equal(sum[:], want.Digest()) {
		return cache.ErrHashMismatch
	}
	var refs []string
	for _, ref := range info.References {
		if ref != info.StorePath {
			if have, _ := c.HasPath(context.Background(), ref); !have {
				return fmt.Errorf("put %q: %w: %q", info.StorePath, cache.ErrMissingReference, ref)
			}
		}
		refs = append(refs, path.Base(ref))
	}
	c.put(info.StorePath, data, refs, c.key)
	c.mu.Lock()
	if c.receivedSigs == nil {
		c.receivedSigs = map[string][]string{}
	}
	c.receivedSigs[info.StorePath] = info.Signatures
	c.mu.Unlock()
	return nil
}

// receivedSignatures returns the signatures PutNAR received for storePath.
func (c *memCache) receivedSignatures(storePath string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.receivedSigs[storePath]
}

// put stores data as the NAR of storePath, signed by key.
func (c *memCache) put(storePath string, data []byte, refs []string, key narinfo.SecretKey) *narinfo.NarInfo {
	sum := sha256.Sum256(data)
	h := mustHash(sum[:])
	url := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	info := &narinfo.NarInfo{
		StorePath:   storePath,
		URL:         url,
		Compression: "none",
		FileHash:    h,
		FileSize:    uint64(len(data)),
		NarHash:     h,
		NarSize:     uint64(len(data)),
		References:  refs,
	}
	if err := narinfo.Sign(info, key); err != nil {
		panic(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.infos[narinfo.HashPart(storePath)] = info
	c.files[url] = data
	return info
}

// putFile stores file, which is nar compressed with compression, as the
// NAR file of storePath, signed by key.
func (c *memCache) putFile(storePath string, nar, file []byte, compression string, key narinfo.SecretKey) *narinfo.NarInfo {
	narSum := sha256.Sum256(nar)
	fileSum := sha256.Sum256(file)
	url := "nar/" + nixbase32.EncodeToString(fileSum[:]) + ".nar." + compression
	info := &narinfo.NarInfo{
		StorePath:   storePath,
		URL:         url,
		Compression: compression,
		FileHash:    mustHash(fileSum[:]),
		FileSize:    uint64(len(file)),
		NarHash:     mustHash(narSum[:]),
		NarSize:     uint64(len(nar)),
	}
	if err := narinfo.Sign(info, key); err != nil {
		panic(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.infos[narinfo.HashPart(storePath)] = info
	c.files[url] = file
	return info
}

// tamper replaces the NAR file of storePath with bytes of the same size.
func (c *memCache) tamper(storePath string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info := c.infos[narinfo.HashPart(storePath)]
	data := bytes.Clone(c.files[info.URL])
	data[0] ^= 0xff
	c.files[info.URL] = data
}

func (c *memCache) file(storePath string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.infos[narinfo.HashPart(storePath)]
	if !ok {
		return nil, false
	}
	return c.files[info.URL], true
}

func mustHash(digest []byte) *nixhash.HashWithEncoding {
	h, err := nixhash.ParseAny("sha256:"+nixbase32.EncodeToString(digest), nil)
	if err != nil {
		panic(err)
	}
	return h
}

// storePath returns a valid store path named name with a hash derived
// from it.
func storePath(name string) string {
	sum := sha256.Sum256([]byte(name))
	return "/nix/store/" + nixbase32.EncodeToString(sum[:20]) + "-" + name
}

// testNode is one node of a test mesh.
type testNode struct {
	*Node
	cache  *memCache
	key    crypto.PrivKey
	builds chan BuildNotice
	cancel context.CancelFunc
	done   chan error
}

// testMesh is a set of nodes on one mocknet.
type testMesh struct {
	t     *testing.T
	net   mocknet.Mocknet
	nodes []*testNode
}

type meshOptions struct {
	// members is the number of nodes in the federation; nodes past it
	// run but are not members.
	members  int
	buildTTL time.Duration
	// noConnect leaves the nodes linked but not connected.
	noConnect bool
	// configure, when set, changes the Config of node i before New.
	configure func(i int, cfg *Config)
}

// newTestMesh starts count nodes, all linked and connected, each with its
// own memCache and a federation of all members.
func newTestMesh(t *testing.T, count int, opts meshOptions) *testMesh {
	t.Helper()
	if opts.members == 0 {
		opts.members = count
	}
	if opts.buildTTL == 0 {
		opts.buildTTL = DefaultBuildTTL
	}

	m := &testMesh{t: t, net: mocknet.New()}
	t.Cleanup(func() { m.net.Close() })

	var members []federation.Member
	for i := range count {
		key, _, err := crypto.GenerateEd25519Key(nil)
		if err != nil {
			t.Fatal(err)
		}
		tn := &testNode{cache: newMemCache(t, fmt.Sprintf("node%d-1", i)), key: key, builds: make(chan BuildNotice, 100), done: make(chan error, 1)}
		m.nodes = append(m.nodes, tn)
		if i < opts.members {
			id, _ := peer.IDFromPrivateKey(key)
			members = append(members, federation.Member{Org: fmt.Sprintf("org%d", i), PeerIDs: []peer.ID{id}, Keys: []narinfo.PublicKey{tn.cache.pub}})
		}
	}

	fed, err := federation.New(time.Hour, members)
	if err != nil {
		t.Fatal(err)
	}

	for i, tn := range m.nodes {
		h, err := m.net.AddPeer(tn.key, mustAddr(fmt.Sprintf("/ip4/127.0.0.1/tcp/%d", 4000+i)))
		if err != nil {
			t.Fatal(err)
		}
		builds := tn.builds
		cfg := Config{
			PrivateKey:     tn.key,
			Federation:     fed,
			Cache:          tn.cache,
			CachePublicKey: tn.cache.pub.String(),
			Host:           h,
			LookupTimeout:  2 * time.Second,
			BuildTTL:       opts.buildTTL,
			PingInterval:   time.Second,
			OnBuild:        func(b BuildNotice) { builds <- b },
			Logger:         testLogger(t),
		}
		if opts.configure != nil {
			opts.configure(i, &cfg)
		}
		tn.Node, err = New(cfg)
		if err != nil {
			t.Fatal(err)
		}
	}

	if err := m.net.LinkAll(); err != nil {
		t.Fatal(err)
	}
	if !opts.noConnect {
		if err := m.net.ConnectAllButSelf(); err != nil {
			t.Fatal(err)
		}
	}

	for _, tn := range m.nodes {
		ctx, cancel := context.WithCancel(context.Background())
		tn.cancel = cancel
		go func() { tn.done <- tn.Run(ctx) }()
		t.Cleanup(tn.stop)
	}

	// Wait for the DHT routing tables and for full GossipSub meshes,
	// which small meshes have.
	for _, tn := range m.nodes {
		waitFor(t, "a routing table entry and the GossipSub mesh", func() bool {
			return opts.noConnect || (tn.dht.RoutingTable().Size() > 0 && tn.tracer.len() == min(count-1, 6))
		})
	}

	return m
}

// stop cancels the node's Run and waits for it to return.
func (tn *testNode) stop() {
	if tn.cancel == nil {
		return
	}
	tn.cancel()
	tn.cancel = nil
	if err := <-tn.done; err != nil && !errors.Is(err, context.Canceled) {
		panic(fmt.Sprintf("Run = %v, want context.Canceled", err))
	}
}

func mustAddr(s string) ma.Multiaddr {
	addr, err := ma.NewMultiaddr(s)
	if err != nil {
		panic(err)
	}
	return addr
}

// waitFor polls cond every 10ms until it holds or 20 seconds pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-time.After(10 * time.Millisecond)
	}
}

// nextBuild returns the next build notice of tn for drvPath, skipping
// others, or fails after 20 seconds.
func (tn *testNode) nextBuild(t testing.TB, drvPath string) BuildNotice {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case b := <-tn.builds:
			if b.DrvPath == drvPath {
				return b
			}
		case <-timeout:
			t.Fatalf("timed out waiting for a build notice of %s", drvPath)
		}
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}
