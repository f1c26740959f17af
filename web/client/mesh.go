package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/web"
)

// MeshStatus returns the node's mesh peer ID, addresses, cache key and
// counts.
func (c *Client) MeshStatus(ctx context.Context) (mesh.Status, error) {
	var st mesh.Status
	err := c.do(ctx, http.MethodGet, "/api/v1/mesh/status", nil, &st)
	return st, err
}

// MeshPeers returns the node's connected mesh peers, nearest first.
func (c *Client) MeshPeers(ctx context.Context) ([]mesh.PeerInfo, error) {
	var peers []mesh.PeerInfo
	err := c.do(ctx, http.MethodGet, "/api/v1/mesh/peers", nil, &peers)
	return peers, err
}

// MeshTrust adds a peer ID and cache key to an organisation of the node's
// federation, which the node saves.
func (c *Client) MeshTrust(ctx context.Context, req web.MeshTrustRequest) (web.MeshTrustResponse, error) {
	var resp web.MeshTrustResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/mesh/trust", req, &resp)
	return resp, err
}

// MeshFind returns the peers that provide storePath and those that build
// its derivation.
func (c *Client) MeshFind(ctx context.Context, storePath string) (web.MeshFindResult, error) {
	var result web.MeshFindResult
	err := c.do(ctx, http.MethodGet, "/api/v1/mesh/find?path="+url.QueryEscape(storePath), nil, &result)
	return result, err
}
