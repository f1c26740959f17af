package mesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/libp2p/go-libp2p/core/peerstore"
	ma "github.com/multiformats/go-multiaddr"
)

// WellKnownPath is the HTTP path at which a Gradient node with the mesh
// enabled describes its libp2p endpoint, so that a node whose upstream
// cache is another Gradient node can reach it as a peer.
const WellKnownPath = "/.well-known/gradient"

// maxWellKnownSize bounds the document that ProbeUpstream reads.
const maxWellKnownSize = 64 << 10

// maxWellKnownAddrs bounds the addresses taken from the document.
const maxWellKnownAddrs = 32

// ErrNotGradient is wrapped by ProbeUpstream when the server at an
// upstream URL does not serve a Gradient mesh endpoint.
var ErrNotGradient = errors.New("upstream is not a Gradient node with the mesh enabled")

// ErrNotMember is wrapped by AddPeer when the peer is not a member of the
// federation.
var ErrNotMember = errors.New("peer is not a federation member")

// WellKnown is the JSON document served at WellKnownPath.
type WellKnown struct {
	// PeerID is the node's libp2p peer ID.
	PeerID string `json:"peer_id"`
	// Addrs are the node's multiaddrs, each ending in /p2p/<peer ID>.
	Addrs []string `json:"addrs"`
	// CachePublicKey is the public key of the node's cache in Nix's
	// "<name>:<base64>" format.
	CachePublicKey string `json:"cache_public_key"`
}

// WellKnown returns the document that the node's HTTP server serves at
// WellKnownPath.
func (n *Node) WellKnown() WellKnown {
	st := n.Status()
	return WellKnown{PeerID: st.PeerID, Addrs: st.Addrs, CachePublicKey: st.CachePublicKey}
}

// ProbeUpstream requests WellKnownPath at the scheme and host of
// upstreamURL, such as "http://ci.example.org/cache/main", and returns
// the peer that it names. It returns an error wrapping ErrNotGradient
// when the server returns 404 or a document that is not a
// WellKnown, and another error when the request fails. The document is
// untrusted: its peer ID is checked only when a connection is made.
func ProbeUpstream(ctx context.Context, client *http.Client, upstreamURL string) (peer.AddrInfo, WellKnown, error) {
	u, err := url.Parse(upstreamURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: invalid URL: give http:// or https://", upstreamURL)
	}

	wellKnownURL := (&url.URL{Scheme: u.Scheme, Host: u.Host, Path: WellKnownPath}).String()

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, wellKnownURL, nil)
	if err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: %w", upstreamURL, err)
	}

	resp, err := client.Do(req)
	if err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: %w", upstreamURL, err)
	}
	defer resp.Body.Close()

	switch {
	case resp.StatusCode == http.StatusNotFound:
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: %w", upstreamURL, ErrNotGradient)
	case resp.StatusCode != http.StatusOK:
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: GET %s returned %s", upstreamURL, wellKnownURL, resp.Status)
	}

	doc, err := io.ReadAll(io.LimitReader(resp.Body, maxWellKnownSize+1))
	if err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: %w", upstreamURL, err)
	}

	info, wk, err := ParseWellKnown(doc)
	if err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("probe upstream %q: %w", upstreamURL, err)
	}

	return info, wk, nil
}

// ParseWellKnown parses a WellKnown document and returns its peer with
// the addresses that parse and belong to it. It returns an error wrapping
// ErrNotGradient when the document is too large, not JSON or has an
// invalid peer ID.
func ParseWellKnown(doc []byte) (peer.AddrInfo, WellKnown, error) {
	if len(doc) > maxWellKnownSize {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("%w: document is larger than %d bytes", ErrNotGradient, maxWellKnownSize)
	}

	var wk WellKnown
	if err := json.Unmarshal(doc, &wk); err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("%w: %w", ErrNotGradient, err)
	}

	id, err := peer.Decode(wk.PeerID)
	if err != nil {
		return peer.AddrInfo{}, WellKnown{}, fmt.Errorf("%w: peer_id %q: %w", ErrNotGradient, wk.PeerID, err)
	}

	info := peer.AddrInfo{ID: id}

	for _, s := range wk.Addrs[:min(len(wk.Addrs), maxWellKnownAddrs)] {
		addr, err := ma.NewMultiaddr(s)
		if err != nil {
			continue
		}

		// An address that names another peer is left out.
		transport, other := peer.SplitAddr(addr)
		if transport == nil || (other != "" && other != id) {
			continue
		}

		if !slices.ContainsFunc(info.Addrs, transport.Equal) {
			info.Addrs = append(info.Addrs, transport)
		}
	}

	return info, wk, nil
}

// AddPeer records the addresses of a member peer, such as one found by
// ProbeUpstream, and connects to it. The node dials it again, like a
// bootstrap peer, whenever it has no peers. It returns an error wrapping
// ErrNotMember for a peer outside the federation, and the dial error when
// the connection fails, in which case the peer is still kept.
func (n *Node) AddPeer(ctx context.Context, info peer.AddrInfo) error {
	if info.ID == n.host.ID() {
		return nil
	}

	if !n.Federation().Admits(info.ID) {
		return fmt.Errorf("add peer %s: %w", info.ID, ErrNotMember)
	}

	n.host.Peerstore().AddAddrs(info.ID, info.Addrs, peerstore.PermanentAddrTTL)

	n.mu.Lock()
	if !slices.ContainsFunc(n.extraPeers, func(p peer.AddrInfo) bool { return p.ID == info.ID }) {
		n.extraPeers = append(n.extraPeers, info)
	}
	n.mu.Unlock()

	dialCtx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout)
	defer cancel()

	if err := n.host.Connect(dialCtx, info); err != nil {
		return fmt.Errorf("add peer %s: %w", info.ID, err)
	}

	// The routing table learns of the peer from the connection; a
	// refresh spreads the news.
	if err := n.dht.Bootstrap(ctx); err != nil {
		n.logger.Debug("refreshing the DHT routing table failed", "error", err)
	}

	return nil
}
