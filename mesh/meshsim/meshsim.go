// Package meshsim runs many mesh nodes in one process on a libp2p mocknet
// and measures provider lookups, announcing, and how fast a build
// announcement reaches every node. The node owner can expose Run as a
// command; docs/mesh.md records its figures.
package meshsim

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/routing"
	mocknet "github.com/libp2p/go-libp2p/p2p/net/mock"
	ma "github.com/multiformats/go-multiaddr"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/mesh/federation"
)

// Options configures a simulation. Zero fields get the defaults shown.
type Options struct {
	// Nodes is the number of nodes (200).
	Nodes int
	// Degree is the number of random peers each node connects to at
	// start, besides its neighbour on a ring that keeps the graph
	// connected (8).
	Degree int
	// Latency is the one-way latency of every link (5ms).
	Latency time.Duration
	// Paths is the number of store paths announced, spread over
	// Providers nodes (2000 over 1). One provider measures what one node
	// needs to announce its cache.
	Paths     int
	Providers int
	// Lookups is the number of provider lookups, each from a random node
	// for a random announced path (200).
	Lookups int
	// Builds is the number of build announcements whose spread to every
	// node is timed (20).
	Builds int
	// AnnounceConcurrency is mesh.Config.AnnounceConcurrency of every
	// node (the mesh default, 32).
	AnnounceConcurrency int
	// Seed seeds the random choices (1).
	Seed uint64
}

func (o *Options) setDefaults() {
	set := func(field *int, value int) {
		if *field == 0 {
			*field = value
		}
	}
	set(&o.Nodes, 200)
	set(&o.Degree, 8)
	set(&o.Paths, 2000)
	set(&o.Providers, 1)
	set(&o.Lookups, 200)
	set(&o.Builds, 20)

	if o.Latency == 0 {
		o.Latency = 5 * time.Millisecond
	}

	if o.Seed == 0 {
		o.Seed = 1
	}
}

// Result holds the measured figures.
type Result struct {
	Options Options
	// Setup is the time to create, connect and start the nodes.
	Setup time.Duration
	// AnnounceTime is the time until every path was announced, and
	// AnnounceRate the provider records published per second by all
	// providers together.
	AnnounceTime time.Duration
	AnnounceRate float64
	// AnnounceRatePerNode is AnnounceRate divided by Providers, and
	// Announce100k the time one node needs for 100,000 paths at that
	// rate, an extrapolation.
	AnnounceRatePerNode float64
	Announce100k        time.Duration
	// AnnounceCPU is the CPU time the whole process used while the
	// paths were announced, zero where the system does not report it.
	// Divided by AnnounceTime it gives the cores kept busy.
	AnnounceCPU time.Duration
	// Lookup latencies of the lookups that found a provider.
	LookupP50, LookupP95, LookupMax time.Duration
	// LookupFailures counts lookups that found no provider.
	LookupFailures int
	// QueriesPerLookup is the mean number of DHT requests a lookup sent,
	// and Hops the mean depth of the referral chain: 1 for a peer from
	// the node's own routing table, plus 1 for each referral.
	QueriesPerLookup float64
	Hops             float64
	// Spread times from StartBuild until every other node received the
	// announcement.
	SpreadP50, SpreadP95, SpreadMax time.Duration
	// SpreadMissing counts announcements that did not reach every node
	// within 30 seconds.
	SpreadMissing int
}

// String formats r as the lines docs/mesh.md records.
func (r Result) String() string {
	o := r.Options
	return fmt.Sprintf(`nodes=%d degree=%d latency=%s paths=%d providers=%d lookups=%d builds=%d announce_concurrency=%d
setup=%s
announce: %d paths in %s, %.0f records/s in total, %.1f records/s per node, 100k paths on one node in about %s, cpu=%s (%.2f cores)
lookup: p50=%s p95=%s max=%s failures=%d queries/lookup=%.1f hops=%.2f
build announcement to every node: p50=%s p95=%s max=%s missing=%d`,
		o.Nodes, o.Degree, o.Latency, o.Paths, o.Providers, o.Lookups, o.Builds, o.AnnounceConcurrency,
		r.Setup.Round(time.Millisecond),
		o.Paths, r.AnnounceTime.Round(time.Millisecond), r.AnnounceRate, r.AnnounceRatePerNode, r.Announce100k.Round(time.Second), r.AnnounceCPU.Round(time.Millisecond), r.AnnounceCPU.Seconds()/r.AnnounceTime.Seconds(),
		r.LookupP50.Round(time.Millisecond), r.LookupP95.Round(time.Millisecond), r.LookupMax.Round(time.Millisecond), r.LookupFailures, r.QueriesPerLookup, r.Hops,
		r.SpreadP50.Round(time.Millisecond), r.SpreadP95.Round(time.Millisecond), r.SpreadMax.Round(time.Millisecond), r.SpreadMissing)
}

type sim struct {
	opts   Options
	rng    *rand.Rand
	net    mocknet.Mocknet
	nodes  []*mesh.Node
	logger *slog.Logger

	// mu guards received.
	mu sync.Mutex
	// received counts, per derivation, the nodes that received its
	// build announcement, and done is closed when all did.
	received map[string]*spread
}

type spread struct {
	count int
	done  chan struct{}
}

// Run runs one simulation. Cancelling ctx stops it early with ctx's error.
func Run(ctx context.Context, opts Options, logger *slog.Logger) (Result, error) {
	opts.setDefaults()

	s := &sim{
		opts:     opts,
		rng:      rand.New(rand.NewPCG(opts.Seed, opts.Seed)),
		net:      mocknet.New(),
		logger:   logger,
		received: map[string]*spread{},
	}
	defer s.net.Close()

	result := Result{Options: opts}

	start := time.Now()
	stop, err := s.start(ctx)
	if err != nil {
		return result, err
	}
	defer stop()
	result.Setup = time.Since(start)

	paths, err := s.announce(ctx, &result)
	if err != nil {
		return result, err
	}

	s.lookups(ctx, paths, &result)
	s.builds(ctx, &result)

	return result, ctx.Err()
}

func (s *sim) start(ctx context.Context) (stop func(), err error) {
	s.net.SetLinkDefaults(mocknet.LinkOptions{Latency: s.opts.Latency})

	keys := make([]crypto.PrivKey, s.opts.Nodes)
	members := make([]federation.Member, s.opts.Nodes)

	for i := range keys {
		keys[i], _, err = crypto.GenerateEd25519Key(nil)
		if err != nil {
			return nil, err
		}

		id, _ := peer.IDFromPrivateKey(keys[i])
		_, public, err := narinfo.GenerateKey(fmt.Sprintf("sim-node-%d", i))
		if err != nil {
			return nil, err
		}

		members[i] = federation.Member{Org: fmt.Sprintf("org%03d", i), PeerIDs: []peer.ID{id}, Keys: []narinfo.PublicKey{public}}
	}

	fed, err := federation.New(time.Hour, members)
	if err != nil {
		return nil, err
	}

	for i, key := range keys {
		addr, _ := ma.NewMultiaddr(fmt.Sprintf("/ip4/10.%d.%d.1/tcp/4001", i/256, i%256))

		h, err := s.net.AddPeer(key, addr)
		if err != nil {
			return nil, err
		}

		node, err := mesh.New(mesh.Config{
			PrivateKey: key,
			Federation: fed,
			Cache:      emptyCache{},
			Host:       h,
			// A long timeout lets the simulation time whole lookups.
			LookupTimeout:       10 * time.Second,
			PingInterval:        time.Hour,
			AnnounceConcurrency: s.opts.AnnounceConcurrency,
			OnBuild:             s.onBuild,
			Logger:              s.logger,
		})
		if err != nil {
			return nil, err
		}

		s.nodes = append(s.nodes, node)
	}

	if err := s.net.LinkAll(); err != nil {
		return nil, err
	}

	ids := s.net.Peers()
	for i, id := range ids {
		targets := []peer.ID{ids[(i+1)%len(ids)]}
		for range s.opts.Degree {
			targets = append(targets, ids[s.rng.IntN(len(ids))])
		}

		for _, target := range targets {
			if target == id {
				continue
			}

			if _, err := s.net.ConnectPeers(id, target); err != nil {
				return nil, err
			}
		}
	}

	runCtx, cancel := context.WithCancel(ctx)

	var wg sync.WaitGroup
	for _, node := range s.nodes {
		wg.Go(func() { node.Run(runCtx) })
	}

	stop = func() {
		cancel()
		wg.Wait()
	}

	// GossipSub forms its mesh at its first heartbeats, one second
	// apart; give it three before measuring.
	select {
	case <-time.After(3 * time.Second):
	case <-ctx.Done():
		stop()
		return nil, ctx.Err()
	}

	return stop, nil
}

// announce spreads the paths over Providers random nodes and waits until
// every one is announced.
func (s *sim) announce(ctx context.Context, result *Result) ([]announced, error) {
	paths := make([]string, s.opts.Paths)
	for i := range paths {
		sum := sha256.Sum256(fmt.Appendf(nil, "sim-path-%d", i))
		paths[i] = "/nix/store/" + nixbase32.EncodeToString(sum[:20]) + "-sim"
	}

	providers := s.rng.Perm(len(s.nodes))[:s.opts.Providers]

	out := make([]announced, len(paths))

	start, startCPU := time.Now(), processCPU()
	for i, path := range paths {
		provider := providers[i%len(providers)]
		out[i] = announced{path: path, provider: provider}

		if err := s.nodes[provider].AnnouncePaths(path); err != nil {
			return nil, err
		}
	}

	for {
		total := int64(0)
		for _, i := range providers {
			total += s.nodes[i].Stats().Announced
		}

		if total >= int64(len(paths)) {
			break
		}

		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}

	result.AnnounceTime = time.Since(start)
	result.AnnounceCPU = processCPU() - startCPU
	result.AnnounceRate = float64(len(paths)) / result.AnnounceTime.Seconds()
	result.AnnounceRatePerNode = result.AnnounceRate / float64(len(providers))
	result.Announce100k = time.Duration(100_000 / result.AnnounceRatePerNode * float64(time.Second))

	return out, nil
}

// announced is a path and the index of the node that announced it.
type announced struct {
	path     string
	provider int
}

func (s *sim) lookups(ctx context.Context, paths []announced, result *Result) {
	var (
		latencies      []time.Duration
		queries, depth int
	)

	for range s.opts.Lookups {
		path := paths[s.rng.IntN(len(paths))]

		// A node does not look itself up, so ask any other.
		i := s.rng.IntN(len(s.nodes) - 1)
		if i >= path.provider {
			i++
		}
		node := s.nodes[i]

		// The events channel closes when the context it was registered
		// on ends.
		lookupCtx, cancel := context.WithCancel(ctx)
		lookupCtx, events := routing.RegisterForQueryEvents(lookupCtx)

		counted := make(chan [2]int, 1)
		go func() { counted <- countQueries(events) }()

		start := time.Now()
		_, err := node.FindProviders(lookupCtx, path.path)
		elapsed := time.Since(start)
		cancel()

		c := <-counted
		if err != nil {
			result.LookupFailures++
			continue
		}

		latencies = append(latencies, elapsed)
		queries += c[0]
		depth += c[1]
	}

	if len(latencies) == 0 {
		return
	}

	result.LookupP50, result.LookupP95, result.LookupMax = percentiles(latencies)
	result.QueriesPerLookup = float64(queries) / float64(len(latencies))
	result.Hops = float64(depth) / float64(len(latencies))
}

// countQueries reads a lookup's query events until the channel closes and
// returns the requests sent and the deepest referral of a queried peer.
func countQueries(events <-chan *routing.QueryEvent) [2]int {
	depth := map[peer.ID]int{}
	sent, deepest := 0, 0

	for e := range events {
		switch e.Type {
		case routing.SendingQuery:
			sent++
			if depth[e.ID] == 0 {
				depth[e.ID] = 1
			}
			deepest = max(deepest, depth[e.ID])
		case routing.PeerResponse:
			for _, info := range e.Responses {
				if depth[info.ID] == 0 {
					depth[info.ID] = max(depth[e.ID], 1) + 1
				}
			}
		}
	}

	return [2]int{sent, deepest}
}

func (s *sim) onBuild(notice mesh.BuildNotice) {
	s.mu.Lock()
	defer s.mu.Unlock()

	sp, ok := s.received[notice.DrvPath]
	if !ok {
		return
	}

	sp.count++
	if sp.count == len(s.nodes)-1 {
		close(sp.done)
	}
}

func (s *sim) builds(ctx context.Context, result *Result) {
	var times []time.Duration

	for i := range s.opts.Builds {
		sum := sha256.Sum256(fmt.Appendf(nil, "sim-drv-%d", i))
		drv := "/nix/store/" + nixbase32.EncodeToString(sum[:20]) + "-sim.drv"
		sp := &spread{done: make(chan struct{})}

		s.mu.Lock()
		s.received[drv] = sp
		s.mu.Unlock()

		start := time.Now()
		if err := s.nodes[s.rng.IntN(len(s.nodes))].StartBuild(ctx, drv, time.Minute); err != nil {
			s.logger.Error("start build failed", "error", err)
			result.SpreadMissing++
			continue
		}

		select {
		case <-sp.done:
			times = append(times, time.Since(start))
		case <-time.After(30 * time.Second):
			result.SpreadMissing++
		case <-ctx.Done():
			return
		}
	}

	if len(times) > 0 {
		result.SpreadP50, result.SpreadP95, result.SpreadMax = percentiles(times)
	}
}

func percentiles(d []time.Duration) (p50, p95, maximum time.Duration) {
	slices.Sort(d)
	at := func(q float64) time.Duration { return d[min(len(d)-1, int(q*float64(len(d))))] }
	return at(0.5), at(0.95), d[len(d)-1]
}

// emptyCache holds nothing: simulated nodes announce paths without
// serving them.
type emptyCache struct{}

func (emptyCache) NarInfo(_ context.Context, hashPart string) (*narinfo.NarInfo, error) {
	return nil, fmt.Errorf("read narinfo %q: %w", hashPart, cache.ErrNotFound)
}

func (emptyCache) OpenNAR(_ context.Context, url string) (io.ReadCloser, int64, error) {
	return nil, 0, fmt.Errorf("open NAR %q: %w", url, cache.ErrNotFound)
}
