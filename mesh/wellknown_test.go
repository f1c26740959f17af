package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"
)

func newPeerID(t testing.TB) peer.ID {
	t.Helper()
	key, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestParseWellKnown(t *testing.T) {
	id, other := newPeerID(t), newPeerID(t)

	tests := []struct {
		name      string
		doc       string
		wantAddrs []string
		wantErr   error
	}{
		{"addresses with and without peer ID",
			`{"peer_id":"` + id.String() + `","addrs":["/ip4/127.0.0.1/tcp/4001/p2p/` + id.String() + `","/ip4/10.0.0.1/udp/4001/quic-v1"]}`,
			[]string{"/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.0.1/udp/4001/quic-v1"}, nil},
		{"address of another peer is dropped",
			`{"peer_id":"` + id.String() + `","addrs":["/ip4/127.0.0.1/tcp/4001/p2p/` + other.String() + `"]}`,
			nil, nil},
		{"invalid address is dropped",
			`{"peer_id":"` + id.String() + `","addrs":["not an address","/ip4/127.0.0.1/tcp/1"]}`,
			[]string{"/ip4/127.0.0.1/tcp/1"}, nil},
		{"duplicate address is dropped",
			`{"peer_id":"` + id.String() + `","addrs":["/ip4/127.0.0.1/tcp/1","/ip4/127.0.0.1/tcp/1/p2p/` + id.String() + `"]}`,
			[]string{"/ip4/127.0.0.1/tcp/1"}, nil},
		{"invalid peer ID", `{"peer_id":"12D3KooWnot-a-peer","addrs":[]}`, nil, ErrNotGradient},
		{"missing peer ID", `{"addrs":[]}`, nil, ErrNotGradient},
		{"not JSON", `<html>`, nil, ErrNotGradient},
		{"too large", `{"peer_id":"` + strings.Repeat("x", maxWellKnownSize) + `"}`, nil, ErrNotGradient},
	}

	for _, tc := range tests {
		info, _, err := ParseWellKnown([]byte(tc.doc))
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("ParseWellKnown(%s) = %v, want %v", tc.name, err, tc.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if info.ID != id {
			t.Errorf("ParseWellKnown(%s).ID = %s, want %s", tc.name, info.ID, id)
		}
		var got []string
		for _, a := range info.Addrs {
			got = append(got, a.String())
		}
		if strings.Join(got, " ") != strings.Join(tc.wantAddrs, " ") {
			t.Errorf("ParseWellKnown(%s).Addrs = %q, want %q", tc.name, got, tc.wantAddrs)
		}
	}
}

// FuzzParseWellKnown checks that every accepted document yields a valid
// peer and only addresses of that peer.
func FuzzParseWellKnown(f *testing.F) {
	seed, err := os.ReadFile("testdata/wellknown.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(seed)
	f.Add([]byte(`{}`))

	f.Fuzz(func(t *testing.T, doc []byte) {
		info, _, err := ParseWellKnown(doc)
		if err != nil {
			return
		}
		if err := info.ID.Validate(); err != nil {
			t.Fatalf("ParseWellKnown(%q) accepted peer ID %q: %v", doc, info.ID, err)
		}
		if len(info.Addrs) > maxWellKnownAddrs {
			t.Fatalf("ParseWellKnown(%q) returned %d addresses, want at most %d", doc, len(info.Addrs), maxWellKnownAddrs)
		}
		for _, a := range info.Addrs {
			if _, id := peer.SplitAddr(a); id != "" {
				t.Fatalf("ParseWellKnown(%q) kept /p2p in %s", doc, a)
			}
		}
	})
}

func TestProbeUpstream(t *testing.T) {
	id := newPeerID(t)
	doc, _ := json.Marshal(WellKnown{PeerID: id.String(), Addrs: []string{"/ip4/127.0.0.1/tcp/4001"}, CachePublicKey: "a-1:key"})

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+WellKnownPath, func(w http.ResponseWriter, r *http.Request) { w.Write(doc) })
	gradient := httptest.NewServer(mux)
	t.Cleanup(gradient.Close)

	plain := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plain.Close)

	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(failing.Close)

	ctx := context.Background()

	info, wk, err := ProbeUpstream(ctx, gradient.Client(), gradient.URL+"/cache/main")
	if err != nil || info.ID != id || len(info.Addrs) != 1 || wk.CachePublicKey != "a-1:key" {
		t.Errorf("ProbeUpstream(gradient node) = %v, %+v, %v, want peer %s with one address", info, wk, err, id)
	}

	if _, _, err := ProbeUpstream(ctx, plain.Client(), plain.URL+"/cache"); !errors.Is(err, ErrNotGradient) {
		t.Errorf("ProbeUpstream(plain cache) = %v, want ErrNotGradient", err)
	}

	if _, _, err := ProbeUpstream(ctx, failing.Client(), failing.URL); err == nil || errors.Is(err, ErrNotGradient) {
		t.Errorf("ProbeUpstream(failing server) = %v, want a request error", err)
	}

	if _, _, err := ProbeUpstream(ctx, http.DefaultClient, "ftp://example.org/"); err == nil {
		t.Error("ProbeUpstream(ftp URL) = nil error, want invalid URL")
	}
}

func TestAddPeer(t *testing.T) {
	m := newTestMesh(t, 3, meshOptions{members: 2, noConnect: true})
	a, b, stranger := m.nodes[0], m.nodes[1], m.nodes[2]

	if err := a.AddPeer(context.Background(), peer.AddrInfo{ID: stranger.ID(), Addrs: stranger.Host().Addrs()}); !errors.Is(err, ErrNotMember) {
		t.Errorf("AddPeer(non-member) = %v, want ErrNotMember", err)
	}

	if err := a.AddPeer(context.Background(), peer.AddrInfo{ID: b.ID(), Addrs: b.Host().Addrs()}); err != nil {
		t.Fatalf("AddPeer(member) = %v", err)
	}

	if len(a.Peers()) != 1 || a.Peers()[0].PeerID != b.ID().String() {
		t.Errorf("A's peers after AddPeer(B) = %+v, want B", a.Peers())
	}
}
