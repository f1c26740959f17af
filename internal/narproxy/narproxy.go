// Package narproxy is a reverse proxy for tests of interrupted NAR
// downloads: it forwards every request to a target, WebSocket upgrades
// included, aborts one NAR response partway through its body, and records
// every GET of a nar/ path.
package narproxy

import (
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// ErrCut ends the body of the response that the proxy cuts, so the client
// sees the connection close before Content-Length.
var ErrCut = errors.New("connection cut by the test proxy")

// Config chooses the response to cut.
type Config struct {
	// MinSize is the smallest Content-Length of a 200 response to cut.
	// Zero also cuts a response without a Content-Length.
	MinSize int64
	// CutAfter returns how many body bytes pass before the cut, given the
	// response's Content-Length (-1 when unknown).
	CutAfter func(contentLength int64) int64
}

// Request is one GET of a nar/ path that went through the proxy.
type Request struct {
	Path string
	// Range is the request's Range header, empty when it had none.
	Range         string
	Status        int
	ContentLength int64
	// Sent counts the body bytes the proxy passed on to the client.
	Sent int64
}

// RangeStart returns N of a Range header "bytes=N-", and false for any
// other header.
func (r Request) RangeStart() (int64, bool) {
	spec, ok := strings.CutPrefix(r.Range, "bytes=")
	if !ok {
		return 0, false
	}
	spec, ok = strings.CutSuffix(spec, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(spec, 10, 64)
	return n, err == nil
}

// Proxy is a running proxy. It is safe for concurrent use.
type Proxy struct {
	srv *httptest.Server
	cfg Config

	// mu guards the fields below.
	mu sync.Mutex
	// cutPath is the URL path of the cut response, empty before the cut.
	cutPath  string
	requests []*Request
}

// Start starts a proxy in front of target, a URL such as
// "http://127.0.0.1:3000", that cuts the first 200 response to a GET of a
// nar/ path that cfg selects. The test's cleanup stops it.
func Start(t testing.TB, target string, cfg Config) *Proxy {
	t.Helper()
	targetURL, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.CutAfter == nil {
		t.Fatal("narproxy: Config.CutAfter is required")
	}

	p := &Proxy{cfg: cfg}
	rp := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(targetURL) },
		// The proxy must add no compression and use no proxy of the
		// environment.
		Transport:      &http.Transport{Proxy: nil, DisableCompression: true},
		FlushInterval:  -1,
		ModifyResponse: p.modifyResponse,
		ErrorLog:       log.New(io.Discard, "", 0),
	}
	p.srv = httptest.NewUnstartedServer(rp)
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.Start()
	t.Cleanup(p.srv.Close)
	return p
}

// URL returns the proxy's base URL.
func (p *Proxy) URL() string { return p.srv.URL }

// CutPath returns the URL path of the cut response, or "" before the cut.
func (p *Proxy) CutPath() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cutPath
}

// Requests returns copies of the recorded GETs of nar/ paths, in order.
func (p *Proxy) Requests() []Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Request, 0, len(p.requests))
	for _, r := range p.requests {
		out = append(out, *r)
	}
	return out
}

// RequestsFor returns copies of the recorded GETs of path, in order.
func (p *Proxy) RequestsFor(path string) []Request {
	var out []Request
	for _, r := range p.Requests() {
		if r.Path == path {
			out = append(out, r)
		}
	}
	return out
}

// modifyResponse records a NAR response and wraps its body so that the
// bytes passed on are counted, and cut when it is the one to cut.
func (p *Proxy) modifyResponse(resp *http.Response) error {
	req := resp.Request
	if req.Method != http.MethodGet || !strings.Contains(req.URL.Path, "/nar/") {
		return nil
	}

	p.mu.Lock()
	defer p.mu.Unlock()

	record := &Request{
		Path:          req.URL.Path,
		Range:         req.Header.Get("Range"),
		Status:        resp.StatusCode,
		ContentLength: resp.ContentLength,
	}
	p.requests = append(p.requests, record)

	limit := int64(-1)
	if p.cutPath == "" && resp.StatusCode == http.StatusOK && (p.cfg.MinSize == 0 || resp.ContentLength >= p.cfg.MinSize) {
		p.cutPath = req.URL.Path
		limit = p.cfg.CutAfter(resp.ContentLength)
	}
	resp.Body = &body{ReadCloser: resp.Body, proxy: p, record: record, remaining: limit}
	return nil
}

// body counts the bytes read from a NAR response and fails with ErrCut
// once remaining reaches 0, unless remaining starts negative.
type body struct {
	io.ReadCloser
	proxy     *Proxy
	record    *Request
	remaining int64
}

func (b *body) Read(p []byte) (int, error) {
	if b.remaining == 0 {
		return 0, ErrCut
	}
	if b.remaining > 0 && int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}

	n, err := b.ReadCloser.Read(p)
	if b.remaining > 0 {
		b.remaining -= int64(n)
	}

	b.proxy.mu.Lock()
	b.record.Sent += int64(n)
	b.proxy.mu.Unlock()
	return n, err
}
