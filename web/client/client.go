// Package client is a Go client of the node's REST API under /api/v1. The
// gradient CLI uses it for every command that talks to a node.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/scheduler/sim"
	"github.com/gradient-ci/gradient/web"
)

// maxResponse bounds a JSON response body read by the client.
const maxResponse = 64 << 20

// Client calls one node's API. It is safe for concurrent use.
type Client struct {
	base  *url.URL
	token string
	http  *http.Client
}

// New returns a client for the node at server, such as
// "http://127.0.0.1:3000", authenticating with token.
func New(server, token string) (*Client, error) {
	u, err := url.Parse(strings.TrimRight(server, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("server URL %q is invalid: give one like http://127.0.0.1:3000", server)
	}
	return &Client{base: u, token: token, http: http.DefaultClient}, nil
}

// APIError is an error response of the API.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.StatusCode)
}

// UnreachableError reports a request that got no HTTP response, such as
// when no node listens at the server URL.
type UnreachableError struct {
	Server string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the node at %s: %v (is 'gradient serve' running there? set --server or GRADIENT_SERVER)", e.Server, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsNotFound reports whether err is an API error with status 404.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.StatusCode == http.StatusNotFound
}

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	resp, err := c.send(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		return nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponse)).Decode(out); err != nil {
		return fmt.Errorf("%s %s: decode response: %w", method, path, err)
	}
	return nil
}

// send performs the request and returns the response of a 2xx status; any
// other status becomes an *APIError. The caller closes the body.
func (c *Client) send(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base.String()+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+c.token)

	resp, err := c.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, &UnreachableError{Server: c.base.String(), Err: err}
	}
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var ae struct {
		Error string `json:"error"`
	}
	msg := strings.TrimSpace(string(raw))
	if json.Unmarshal(raw, &ae) == nil && ae.Error != "" {
		msg = ae.Error
	}
	if msg == "" && resp.StatusCode == http.StatusNotFound {
		msg = fmt.Sprintf("no Gradient API at %s: --server must be the node's root URL, such as http://127.0.0.1:3000", c.base)
	}
	if msg == "" {
		msg = http.StatusText(resp.StatusCode)
	}
	return nil, &APIError{StatusCode: resp.StatusCode, Message: msg}
}

// CreateProject creates a project; its organisation is created if needed.
func (c *Client) CreateProject(ctx context.Context, req web.CreateProjectRequest) (db.Project, error) {
	var p db.Project
	err := c.do(ctx, http.MethodPost, "/api/v1/projects", req, &p)
	return p, err
}

// Project returns one project.
func (c *Client) Project(ctx context.Context, org, name string) (db.Project, error) {
	var p db.Project
	err := c.do(ctx, http.MethodGet, "/api/v1/projects/"+url.PathEscape(org)+"/"+url.PathEscape(name), nil, &p)
	return p, err
}

// Projects lists the projects of org, or all projects when org is empty.
func (c *Client) Projects(ctx context.Context, org string) ([]db.Project, error) {
	var ps []db.Project
	err := c.do(ctx, http.MethodGet, "/api/v1/projects?org="+url.QueryEscape(org), nil, &ps)
	return ps, err
}

// Evaluate queues a new evaluation of a project.
func (c *Client) Evaluate(ctx context.Context, org, name string) (db.Evaluation, error) {
	var e db.Evaluation
	err := c.do(ctx, http.MethodPost, "/api/v1/projects/"+url.PathEscape(org)+"/"+url.PathEscape(name)+"/evaluations", nil, &e)
	return e, err
}

// Evaluation returns one evaluation.
func (c *Client) Evaluation(ctx context.Context, id uint64) (db.Evaluation, error) {
	var e db.Evaluation
	err := c.do(ctx, http.MethodGet, "/api/v1/evaluations/"+db.FormatID(id), nil, &e)
	return e, err
}

// Builds lists the builds of an evaluation.
func (c *Client) Builds(ctx context.Context, evalID uint64) ([]db.Build, error) {
	var bs []db.Build
	err := c.do(ctx, http.MethodGet, "/api/v1/evaluations/"+db.FormatID(evalID)+"/builds", nil, &bs)
	return bs, err
}

// Graph returns the derivation graph of an evaluation in the shape that
// `gradient sim --graph FILE` reads.
func (c *Client) Graph(ctx context.Context, evalID uint64) (sim.GraphFile, error) {
	var g sim.GraphFile
	err := c.do(ctx, http.MethodGet, "/api/v1/evaluations/"+db.FormatID(evalID)+"/graph", nil, &g)
	return g, err
}

// Build returns one build.
func (c *Client) Build(ctx context.Context, id uint64) (db.Build, error) {
	var b db.Build
	err := c.do(ctx, http.MethodGet, "/api/v1/builds/"+db.FormatID(id), nil, &b)
	return b, err
}

// DerivationBuilds lists up to limit builds of a derivation, from every
// evaluation, newest first.
func (c *Client) DerivationBuilds(ctx context.Context, drvPath string, limit int) ([]db.Build, error) {
	var bs []db.Build
	q := url.Values{"drv_path": {drvPath}, "limit": {strconv.Itoa(limit)}}
	err := c.do(ctx, http.MethodGet, "/api/v1/builds?"+q.Encode(), nil, &bs)
	return bs, err
}

// BuildLog returns the build's log. With follow set, the body stays open
// until the build finishes. The caller closes it.
func (c *Client) BuildLog(ctx context.Context, id uint64, follow bool) (io.ReadCloser, error) {
	resp, err := c.send(ctx, http.MethodGet, "/api/v1/builds/"+db.FormatID(id)+"/log?follow="+strconv.FormatBool(follow), nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// Caches lists the node's binary caches.
func (c *Client) Caches(ctx context.Context) ([]web.Cache, error) {
	var cs []web.Cache
	err := c.do(ctx, http.MethodGet, "/api/v1/caches", nil, &cs)
	return cs, err
}

// Cache returns one binary cache.
func (c *Client) Cache(ctx context.Context, name string) (web.Cache, error) {
	var cc web.Cache
	err := c.do(ctx, http.MethodGet, "/api/v1/caches/"+url.PathEscape(name), nil, &cc)
	return cc, err
}
