package mesh

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"github.com/libp2p/go-libp2p/core/network"
	"github.com/libp2p/go-libp2p/core/peer"
)

// upstreamProbeTimeout bounds the request for WellKnownPath of one
// upstream.
const upstreamProbeTimeout = 5 * time.Second

// upstreamState is the outcome of the last probe of an upstream.
type upstreamState int

const (
	upstreamUnprobed upstreamState = iota
	upstreamNotGradient
	upstreamProbeFailed
	upstreamNotMember
	upstreamDialFailed
	upstreamPeer
)

// upstreamResult is the outcome of one probe. err is nil for
// upstreamPeer, and id and cacheKey are empty when the probe failed.
type upstreamResult struct {
	state    upstreamState
	id       peer.ID
	cacheKey string
	err      error
}

// upstreamProbes records the upstream list and the outcome of the last
// probe of each upstream. It does no I/O, so its decisions are testable
// without a network. It is not safe for concurrent use.
type upstreamProbes struct {
	urls    []string
	results map[string]upstreamResult
}

// setURLs replaces the upstream list, deletes the outcomes of upstreams
// that left it and reports whether it changed.
func (u *upstreamProbes) setURLs(urls []string) bool {
	if slices.Equal(u.urls, urls) {
		return false
	}

	u.urls = slices.Clone(urls)

	for url := range u.results {
		if !slices.Contains(urls, url) {
			delete(u.results, url)
		}
	}

	return true
}

// due returns the upstreams to probe: all except those whose last probe
// found a peer that is still connected.
func (u *upstreamProbes) due(connected func(peer.ID) bool) []string {
	var urls []string

	for _, url := range u.urls {
		r := u.results[url]
		if r.state == upstreamPeer && connected(r.id) {
			continue
		}

		urls = append(urls, url)
	}

	return urls
}

// record stores the outcome of a probe of url and reports whether it
// differs from the last one in state or peer, which is when it is worth
// a log line.
func (u *upstreamProbes) record(url string, r upstreamResult) bool {
	if u.results == nil {
		u.results = map[string]upstreamResult{}
	}

	last := u.results[url]
	u.results[url] = r

	return last.state != r.state || last.id != r.id
}

// upstreamLoop probes the upstreams of Config.Upstreams for Gradient
// nodes and adds the members among them as peers: at once, then every
// Config.UpstreamProbeInterval with jitter, and after the list or the
// federation changed. It returns when ctx ends.
func (n *Node) upstreamLoop(ctx context.Context) {
	if n.cfg.Upstreams == nil {
		return
	}

	var probes upstreamProbes

	client := &http.Client{Timeout: upstreamProbeTimeout}

	check := time.NewTicker(n.cfg.UpstreamCheckInterval)
	defer check.Stop()

	next := time.NewTimer(0)
	defer next.Stop()

	for {
		select {
		case <-ctx.Done():
			return
		case <-check.C:
			if !probes.setURLs(n.cfg.Upstreams()) {
				continue
			}
		case <-n.federationChanged:
			// An upstream outside the federation may be a member now.
		case <-next.C:
			probes.setURLs(n.cfg.Upstreams())
			next.Reset(jitter(n.cfg.UpstreamProbeInterval))
		}

		for _, url := range probes.due(n.isConnected) {
			r := n.probeUpstream(ctx, client, url)
			if ctx.Err() != nil {
				return
			}

			if probes.record(url, r) {
				n.logUpstream(url, r)
			}
		}
	}
}

// probeUpstream requests WellKnownPath of url and, when it names a
// member, connects to it with AddPeer.
func (n *Node) probeUpstream(ctx context.Context, client *http.Client, url string) upstreamResult {
	info, wk, err := ProbeUpstream(ctx, client, url)

	switch {
	case errors.Is(err, ErrNotGradient):
		return upstreamResult{state: upstreamNotGradient, err: err}
	case err != nil:
		return upstreamResult{state: upstreamProbeFailed, err: err}
	}

	r := upstreamResult{id: info.ID, cacheKey: wk.CachePublicKey}

	err = n.AddPeer(ctx, info)

	switch {
	case errors.Is(err, ErrNotMember):
		r.state = upstreamNotMember
	case err != nil:
		r.state = upstreamDialFailed
	default:
		r.state = upstreamPeer
	}

	r.err = err

	return r
}

// logUpstream logs the new outcome of the probes of url.
func (n *Node) logUpstream(url string, r upstreamResult) {
	switch r.state {
	case upstreamNotGradient:
		n.logger.Debug("upstream is not a Gradient node with the mesh", "upstream", url, "error", r.err)
	case upstreamProbeFailed:
		n.logger.Info("probing an upstream for a Gradient node failed; it is probed again later",
			"upstream", url, "error", r.err)
	case upstreamNotMember:
		n.logger.Warn("upstream is a Gradient node outside the federation: add it with 'gradient mesh trust'",
			"upstream", url, "remote_peer_id", r.id.String(), "cache_public_key", r.cacheKey)
	case upstreamDialFailed:
		n.logger.Info("connecting to the Gradient node of an upstream failed; it is probed again later",
			"upstream", url, "remote_peer_id", r.id.String(), "error", r.err)
	case upstreamPeer:
		n.logger.Info("upstream is a Gradient node; using it as a mesh peer", "upstream", url, "remote_peer_id", r.id.String())
	}
}

func (n *Node) isConnected(id peer.ID) bool {
	return n.host.Network().Connectedness(id) == network.Connected
}

// jitter returns d varied at random by up to a fifth, so that nodes
// started together do not probe the same upstream together.
func jitter(d time.Duration) time.Duration {
	return d - d/5 + rand.N(2*d/5+1)
}
