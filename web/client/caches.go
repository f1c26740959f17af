package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/gradient-ci/gradient/cache"
)

func cachePath(name string) string {
	return "/api/v1/caches/" + url.PathEscape(name)
}

// CacheSettings returns the settings of a cache.
func (c *Client) CacheSettings(ctx context.Context, name string) (cache.Settings, error) {
	var settings cache.Settings
	err := c.do(ctx, http.MethodGet, cachePath(name)+"/settings", nil, &settings)
	return settings, err
}

// UpdateCacheSettings changes the fields of update that are set and
// returns the settings that result.
func (c *Client) UpdateCacheSettings(ctx context.Context, name string, update cache.SettingsUpdate) (cache.Settings, error) {
	var settings cache.Settings
	err := c.do(ctx, http.MethodPatch, cachePath(name)+"/settings", update, &settings)
	return settings, err
}

// Upstreams lists the upstreams of a cache.
func (c *Client) Upstreams(ctx context.Context, name string) ([]cache.Upstream, error) {
	var ups []cache.Upstream
	err := c.do(ctx, http.MethodGet, cachePath(name)+"/upstreams", nil, &ups)
	return ups, err
}

// AddUpstream adds an upstream to a cache, or replaces the one with the
// same URL, and returns the upstreams that result.
func (c *Client) AddUpstream(ctx context.Context, name string, u cache.Upstream) ([]cache.Upstream, error) {
	var ups []cache.Upstream
	err := c.do(ctx, http.MethodPost, cachePath(name)+"/upstreams", u, &ups)
	return ups, err
}

// RemoveUpstream removes the upstream with URL upstreamURL from a cache
// and returns the upstreams that remain.
func (c *Client) RemoveUpstream(ctx context.Context, name, upstreamURL string) ([]cache.Upstream, error) {
	var ups []cache.Upstream
	err := c.do(ctx, http.MethodDelete, cachePath(name)+"/upstreams?url="+url.QueryEscape(upstreamURL), nil, &ups)
	return ups, err
}

// CollectGarbage runs garbage collection on a cache, or only reports what
// it would remove when opts.DryRun is set.
func (c *Client) CollectGarbage(ctx context.Context, name string, opts cache.GCOptions) (cache.GCReport, error) {
	var report cache.GCReport
	err := c.do(ctx, http.MethodPost, cachePath(name)+"/gc", opts, &report)
	return report, err
}

// CacheStats returns the current values of a cache's metrics.
func (c *Client) CacheStats(ctx context.Context, name string) ([]cache.StatsRow, error) {
	var rows []cache.StatsRow
	err := c.do(ctx, http.MethodGet, cachePath(name)+"/stats", nil, &rows)
	return rows, err
}
