package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/gradient-ci/gradient/web"
)

// RegisterWorker creates a worker and returns its token, which the node
// shows only this once.
func (c *Client) RegisterWorker(ctx context.Context, name string, speed float64) (web.RegisterWorkerResponse, error) {
	var r web.RegisterWorkerResponse
	err := c.do(ctx, http.MethodPost, "/api/v1/workers", web.RegisterWorkerRequest{Name: name, Speed: speed}, &r)
	return r, err
}

// SetWorkerSpeed changes a worker's build speed, which applies the next
// time the worker joins.
func (c *Client) SetWorkerSpeed(ctx context.Context, name string, speed float64) error {
	return c.do(ctx, http.MethodPatch, "/api/v1/workers/"+url.PathEscape(name), web.UpdateWorkerRequest{Speed: &speed}, nil)
}

// Workers lists the registered and connected workers.
func (c *Client) Workers(ctx context.Context) ([]web.WorkerInfo, error) {
	var ws []web.WorkerInfo
	err := c.do(ctx, http.MethodGet, "/api/v1/workers", nil, &ws)
	return ws, err
}

// RevokeWorker deletes a worker's token and disconnects it.
func (c *Client) RevokeWorker(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/api/v1/workers/"+url.PathEscape(name), nil, nil)
}
