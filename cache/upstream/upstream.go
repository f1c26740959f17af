// Package upstream fetches narinfos and NARs from one upstream Nix binary
// cache, such as cache.nixos.org, with bounded waits, bounded reads, a
// circuit breaker and signature checks. Everything an upstream sends is
// treated as hostile until it is checked.
package upstream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	// ConnectTimeout bounds the TCP connect and the TLS handshake of the
	// default HTTP client.
	ConnectTimeout = 3 * time.Second
	// HeaderTimeout bounds the wait for response headers of the default
	// HTTP client.
	HeaderTimeout = 3 * time.Second
)

var (
	// ErrNotFound is wrapped when the upstream does not hold a file: it
	// answered 404, 403 or 410.
	ErrNotFound = errors.New("not found upstream")
	// ErrSkipped is wrapped when the circuit breaker skips the upstream
	// after repeated failures.
	ErrSkipped = errors.New("upstream skipped after repeated failures")
	// ErrInvalid is wrapped when the upstream sent a file that fails the
	// checks: an unparsable or unsigned narinfo, or one for another path.
	ErrInvalid = errors.New("invalid response from upstream")
)

// Config configures an Upstream.
type Config struct {
	// URL is the base URL of the binary cache, http or https.
	URL string
	// PublicKeys are the trusted keys in Nix's "<name>:<base64>" form. At
	// least one is required.
	PublicKeys []string
	// Priority orders upstreams: the lowest number wins.
	Priority int
	// StoreDir is the store directory every narinfo must use.
	StoreDir string
	// Client sends the requests. It defaults to a client with the
	// ConnectTimeout and HeaderTimeout bounds.
	Client *http.Client
	// Breaker configures the circuit breaker.
	Breaker BreakerConfig
	// Now returns the current time for the breaker. It defaults to
	// time.Now.
	Now func() time.Time
}

// Upstream is one upstream binary cache. It is safe for concurrent use.
type Upstream struct {
	base     *url.URL
	keys     []narinfo.PublicKey
	priority int
	storeDir string
	client   *http.Client
	breaker  *breaker
}

var defaultClient = NewHTTPClient()

// NewHTTPClient returns an HTTP client whose connects, TLS handshakes and
// waits for response headers each give up after about three seconds. The
// body has no deadline, so callers bound it with a context.
func NewHTTPClient() *http.Client {
	dialer := &net.Dialer{Timeout: ConnectTimeout, KeepAlive: 30 * time.Second}

	return &http.Client{Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   ConnectTimeout,
		ResponseHeaderTimeout: HeaderTimeout,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   64,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}}
}

// New checks cfg and returns an Upstream.
func New(cfg Config) (*Upstream, error) {
	base, err := url.Parse(strings.TrimRight(cfg.URL, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("upstream URL %q is not an http or https URL", cfg.URL)
	}

	if len(cfg.PublicKeys) == 0 {
		return nil, fmt.Errorf("upstream %q has no public key: give the key that signs its narinfos", cfg.URL)
	}

	u := &Upstream{base: base, priority: cfg.Priority, storeDir: cfg.StoreDir, client: cfg.Client}

	for _, s := range cfg.PublicKeys {
		key, err := narinfo.ParsePublicKey(s)
		if err != nil {
			return nil, fmt.Errorf("upstream %q: public key %q: %w", cfg.URL, s, err)
		}

		u.keys = append(u.keys, key)
	}

	if u.client == nil {
		u.client = defaultClient
	}

	if cfg.Now == nil {
		cfg.Now = time.Now
	}

	u.breaker = newBreaker(cfg.Breaker, cfg.Now)

	return u, nil
}

// URL returns the base URL of the upstream without a trailing slash.
func (u *Upstream) URL() string { return u.base.String() }

// Priority returns the upstream's priority. The lowest number wins.
func (u *Upstream) Priority() int { return u.priority }

// Skipped reports whether the circuit breaker currently skips the
// upstream.
func (u *Upstream) Skipped() bool { return u.breaker.open() }

// NarInfo fetches the narinfo of the store path with hash part hashPart
// and checks it: it must parse, name a path with that hash part in the
// store directory, and carry a valid signature by a trusted key unless
// its CA field proves the path. It returns the narinfo and the absolute
// URL of its NAR file, resolved against the upstream's base URL with its
// query kept. Errors wrap ErrNotFound for a missing narinfo, ErrSkipped
// when the breaker is open, ErrInvalid for a bad narinfo, or the
// transport's error, such as context.DeadlineExceeded.
func (u *Upstream) NarInfo(ctx context.Context, hashPart string) (*narinfo.NarInfo, string, error) {
	resp, err := u.get(ctx, hashPart+".narinfo")
	if err != nil {
		return nil, "", err
	}

	defer resp.Body.Close()

	info, err := narinfo.Parse(resp.Body)
	if err != nil {
		// A body cut by the context is a timeout, not a bad narinfo.
		if ctxErr := ctx.Err(); ctxErr != nil {
			u.breaker.record(false)
			return nil, "", fmt.Errorf("read narinfo %q from %s: %w", hashPart, u.base, ctxErr)
		}

		return nil, "", fmt.Errorf("read narinfo %q from %s: %w: %w", hashPart, u.base, ErrInvalid, err)
	}

	narURL, err := u.accept(info, hashPart)
	if err != nil {
		return nil, "", fmt.Errorf("read narinfo %q from %s: %w: %w", hashPart, u.base, ErrInvalid, err)
	}

	return info, narURL, nil
}

// accept checks a parsed narinfo that the upstream sent for hashPart and
// returns the absolute URL of its NAR file.
func (u *Upstream) accept(info *narinfo.NarInfo, hashPart string) (string, error) {
	if err := u.check(info, hashPart); err != nil {
		return "", err
	}

	narURL, err := u.resolve(info.URL)
	if err != nil {
		return "", fmt.Errorf("field URL: %w", err)
	}

	return narURL, nil
}

func (u *Upstream) check(info *narinfo.NarInfo, hashPart string) error {
	storeDir, _, err := narinfo.SplitStorePath(info.StorePath)
	if err != nil {
		return err
	}

	if storeDir != u.storeDir {
		return fmt.Errorf("field StorePath: %q is not in the store directory %q", info.StorePath, u.storeDir)
	}

	if got := narinfo.HashPart(info.StorePath); got != hashPart {
		return fmt.Errorf("field StorePath: %q does not have the requested hash part %s", info.StorePath, hashPart)
	}

	// An unsigned narinfo is trusted only when its content address binds
	// the NAR: a fixed:r:sha256 CA is the NarHash itself, so the NarHash
	// check after the download proves the content. Text and flat fixed
	// CAs hash something other than the NAR, which is not checked, so
	// such paths need a trusted signature like input-addressed ones.
	if strings.HasPrefix(info.CA, "fixed:r:sha256:") && narinfo.CheckContentAddress(info) == nil {
		return nil
	}

	return narinfo.Verify(info, u.keys)
}

// resolve turns the URL field of a narinfo into an absolute URL on the
// upstream's host. The field is opaque: its path and query are kept as
// they are. A URL on another host is rejected.
func (u *Upstream) resolve(ref string) (string, error) {
	parsed, err := url.Parse(ref)
	if err != nil {
		return "", fmt.Errorf("invalid URL %q", ref)
	}

	base := *u.base
	base.Path = strings.TrimRight(base.Path, "/") + "/"

	abs := base.ResolveReference(parsed)
	if abs.Scheme != u.base.Scheme || abs.Host != u.base.Host {
		return "", fmt.Errorf("URL %q points away from %s", ref, u.base)
	}

	return abs.String(), nil
}

// OpenNAR starts a download of the NAR file at narURL, as returned by
// NarInfo, and returns its body and its Content-Length, or -1 when the
// upstream did not send one. The caller closes the body. Cancelling ctx
// stops the download.
func (u *Upstream) OpenNAR(ctx context.Context, narURL string) (io.ReadCloser, int64, error) {
	if !strings.HasPrefix(narURL, u.base.Scheme+"://"+u.base.Host+"/") {
		return nil, 0, fmt.Errorf("download NAR %q: not on upstream %s", narURL, u.base)
	}

	resp, err := u.getURL(ctx, narURL)
	if err != nil {
		return nil, 0, err
	}

	return resp.Body, resp.ContentLength, nil
}

// StatNAR sends a HEAD request to check whether it serves the
// NAR file at narURL, as returned by NarInfo, without downloading it. It
// returns the file's Content-Length, or -1 when the upstream did not send
// one. Errors are those of OpenNAR: they wrap ErrNotFound, ErrSkipped,
// ErrInvalid or the transport's error, such as context.DeadlineExceeded.
func (u *Upstream) StatNAR(ctx context.Context, narURL string) (int64, error) {
	if !strings.HasPrefix(narURL, u.base.Scheme+"://"+u.base.Host+"/") {
		return 0, fmt.Errorf("head NAR %q: not on upstream %s", narURL, u.base)
	}

	resp, err := u.send(ctx, http.MethodHead, narURL)
	if err != nil {
		return 0, err
	}

	resp.Body.Close()

	return resp.ContentLength, nil
}

// get fetches name relative to the base URL.
func (u *Upstream) get(ctx context.Context, name string) (*http.Response, error) {
	return u.getURL(ctx, u.base.String()+"/"+name)
}

// getURL sends a GET through the breaker, as send does.
func (u *Upstream) getURL(ctx context.Context, target string) (*http.Response, error) {
	return u.send(ctx, http.MethodGet, target)
}

// send sends a GET or HEAD request through the breaker and returns a 200
// response that is not an HTML page. The breaker counts transport errors
// and 5xx responses as failures. The caller closes the body.
func (u *Upstream) send(ctx context.Context, method, target string) (*http.Response, error) {
	verb := strings.ToLower(method)

	if !u.breaker.allow() {
		return nil, fmt.Errorf("%s %s: %w", verb, target, ErrSkipped)
	}

	req, err := http.NewRequestWithContext(ctx, method, target, nil)
	if err != nil {
		u.breaker.record(true)
		return nil, fmt.Errorf("%s %s: %w", verb, target, err)
	}

	resp, err := u.client.Do(req)
	if err != nil {
		u.breaker.record(false)
		return nil, fmt.Errorf("%s %s: %w", verb, target, err)
	}

	u.breaker.record(resp.StatusCode < 500)

	switch {
	case resp.StatusCode == http.StatusOK:
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusForbidden || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %w (HTTP %d)", verb, target, ErrNotFound, resp.StatusCode)
	default:
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: unexpected HTTP status %d", verb, target, resp.StatusCode)
	}

	// A captive portal or a misconfigured proxy answers with a web page.
	if mediaType, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mediaType == "text/html" {
		resp.Body.Close()
		return nil, fmt.Errorf("%s %s: %w: an HTML page", verb, target, ErrInvalid)
	}

	return resp, nil
}
