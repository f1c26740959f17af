package mesh

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/peer"
)

func TestUpstreamProbesBookkeeping(t *testing.T) {
	var probes upstreamProbes
	connectedPeer, gonePeer := newPeerID(t), newPeerID(t)
	connected := func(id peer.ID) bool { return id == connectedPeer }

	if !probes.setURLs([]string{"http://a", "http://b", "http://c"}) {
		t.Error("setURLs(a, b, c) on an empty list = false, want true")
	}
	if probes.setURLs([]string{"http://a", "http://b", "http://c"}) {
		t.Error("setURLs(the same list) = true, want false")
	}
	if got, want := probes.due(connected), []string{"http://a", "http://b", "http://c"}; !slices.Equal(got, want) {
		t.Errorf("due() before any probe = %q, want %q", got, want)
	}

	if !probes.record("http://a", upstreamResult{state: upstreamPeer, id: connectedPeer}) {
		t.Error("record(a, first outcome) = false, want true")
	}
	if !probes.record("http://b", upstreamResult{state: upstreamPeer, id: gonePeer}) {
		t.Error("record(b, first outcome) = false, want true")
	}
	if !probes.record("http://c", upstreamResult{state: upstreamProbeFailed}) {
		t.Error("record(c, first outcome) = false, want true")
	}
	if probes.record("http://c", upstreamResult{state: upstreamProbeFailed}) {
		t.Error("record(c, the same failure again) = true, want false: no new log line")
	}

	// A is a connected peer; B's peer is gone, so B is probed again.
	if got, want := probes.due(connected), []string{"http://b", "http://c"}; !slices.Equal(got, want) {
		t.Errorf("due() with A connected = %q, want %q", got, want)
	}

	if !probes.record("http://b", upstreamResult{state: upstreamPeer, id: connectedPeer}) {
		t.Error("record(b, another peer) = false, want true")
	}

	// A removed upstream loses its outcome, so adding it again probes
	// and logs it again.
	probes.setURLs([]string{"http://b"})
	probes.setURLs([]string{"http://b", "http://a"})
	if got, want := probes.due(connected), []string{"http://a"}; !slices.Equal(got, want) {
		t.Errorf("due() after a was removed and added = %q, want %q", got, want)
	}
	if !probes.record("http://a", upstreamResult{state: upstreamPeer, id: connectedPeer}) {
		t.Error("record(a, after it was removed and added) = false, want true")
	}
}

func TestJitter(t *testing.T) {
	for range 1000 {
		if got := jitter(100 * time.Second); got < 80*time.Second || got > 120*time.Second {
			t.Fatalf("jitter(100s) = %s, want within 80s to 120s", got)
		}
	}
}

// wellKnownServer serves the WellKnown document of n while up is
// true, and 503 Service Unavailable otherwise, and counts the requests.
type wellKnownServer struct {
	*httptest.Server
	up       atomic.Bool
	requests atomic.Int64
}

func newWellKnownServer(t *testing.T, n *Node, up bool) *wellKnownServer {
	t.Helper()
	s := &wellKnownServer{}
	s.up.Store(up)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.requests.Add(1)
		if r.URL.Path != WellKnownPath {
			http.NotFound(w, r)
			return
		}
		if !s.up.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		json.NewEncoder(w).Encode(n.WellKnown())
	}))
	t.Cleanup(s.Close)
	return s
}

// logRecorder is a slog.Handler that keeps the message of every record.
type logRecorder struct {
	mu       sync.Mutex
	messages []string
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.messages = append(r.messages, rec.Message)
	return nil
}

func (r *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }

func (r *logRecorder) WithGroup(string) slog.Handler { return r }

func (r *logRecorder) count(message string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, m := range r.messages {
		if m == message {
			n++
		}
	}
	return n
}

// upstreamList is a list of upstream URLs that a test changes while a
// node reads it through Config.Upstreams.
type upstreamList struct{ urls atomic.Pointer[[]string] }

func (l *upstreamList) set(urls ...string) { l.urls.Store(&urls) }

func (l *upstreamList) get() []string {
	if urls := l.urls.Load(); urls != nil {
		return *urls
	}
	return nil
}

const (
	logUpstreamPeer      = "upstream is a Gradient node; using it as a mesh peer"
	logUpstreamFailed    = "probing an upstream for a Gradient node failed; it is probed again later"
	logUpstreamNotMember = "upstream is a Gradient node outside the federation: add it with 'gradient mesh trust'"
)

func TestUpstreamAddedLaterBecomesPeer(t *testing.T) {
	var plainRequests atomic.Int64
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		plainRequests.Add(1)
		http.NotFound(w, r)
	}))
	t.Cleanup(plain.Close)

	var upstreams upstreamList
	upstreams.set(plain.URL)

	m := newTestMesh(t, 2, meshOptions{noConnect: true, configure: func(i int, cfg *Config) {
		if i == 0 {
			cfg.Upstreams = upstreams.get
			cfg.UpstreamCheckInterval = 20 * time.Millisecond
			// Only the change of the list can make A probe again.
			cfg.UpstreamProbeInterval = time.Hour
		}
	}})
	a, b := m.nodes[0], m.nodes[1]
	gradient := newWellKnownServer(t, b.Node, true)

	waitFor(t, "A's probe of its first upstream at start", func() bool { return plainRequests.Load() > 0 })
	if a.isConnected(b.ID()) {
		t.Fatal("A is connected to B before B is its upstream")
	}

	upstreams.set(plain.URL, gradient.URL+"/cache/main")

	waitFor(t, "A connected to B, its new upstream", func() bool { return a.isConnected(b.ID()) })
}

func TestUpstreamDownAtStartIsProbedAgain(t *testing.T) {
	var upstreams upstreamList
	logs := &logRecorder{}

	m := newTestMesh(t, 2, meshOptions{noConnect: true, configure: func(i int, cfg *Config) {
		if i == 0 {
			cfg.Upstreams = upstreams.get
			cfg.UpstreamProbeInterval = 20 * time.Millisecond
			cfg.Logger = slog.New(logs)
		}
	}})
	a, b := m.nodes[0], m.nodes[1]

	// A may have probed its empty list already: its next round comes
	// within 24ms.
	down := newWellKnownServer(t, b.Node, false)
	upstreams.set(down.URL)

	waitFor(t, "three failed probes", func() bool { return down.requests.Load() >= 3 })
	if a.isConnected(b.ID()) {
		t.Fatal("A is connected to B while B's well-known endpoint is down")
	}

	down.up.Store(true)
	waitFor(t, "A connected to B once its endpoint is up", func() bool { return a.isConnected(b.ID()) })

	if n := logs.count(logUpstreamFailed); n != 1 {
		t.Errorf("A logged %q %d times, want once for three or more failed probes", logUpstreamFailed, n)
	}
	waitFor(t, "A's log line about its new peer", func() bool { return logs.count(logUpstreamPeer) > 0 })
	if n := logs.count(logUpstreamPeer); n != 1 {
		t.Errorf("A logged %q %d times, want once", logUpstreamPeer, n)
	}
}

func TestUpstreamProbedAgainAfterTrust(t *testing.T) {
	var upstreams upstreamList
	logs := &logRecorder{}

	// Only A is a member, so A does not admit B until it trusts B.
	m := newTestMesh(t, 2, meshOptions{members: 1, noConnect: true, configure: func(i int, cfg *Config) {
		if i == 0 {
			cfg.Upstreams = upstreams.get
			cfg.UpstreamCheckInterval = 20 * time.Millisecond
			cfg.UpstreamProbeInterval = time.Hour
			cfg.Logger = slog.New(logs)
		}
	}})
	a, b := m.nodes[0], m.nodes[1]
	gradient := newWellKnownServer(t, b.Node, true)
	upstreams.set(gradient.URL)

	waitFor(t, "A's warning about a non-member upstream", func() bool { return logs.count(logUpstreamNotMember) > 0 })

	if _, err := a.Trust("org1", b.ID(), b.cache.pub); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "A connected to B after trusting it", func() bool { return a.isConnected(b.ID()) })
}
