package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/coder/websocket"
)

// Dialer opens a connection to a node.
type Dialer func(ctx context.Context) (Conn, error)

// ConnectPath is the path of the node's WebSocket endpoint for workers.
const ConnectPath = "/api/v1/workers/connect"

// DialWebSocket returns a Dialer that connects to the node at serverURL,
// such as "http://127.0.0.1:3000", with the worker's token. A node that
// responds with 401 or 403 makes the Dialer return a *RejectError with the
// node's reason.
func DialWebSocket(serverURL, token string) Dialer {
	return func(ctx context.Context) (Conn, error) {
		url := strings.TrimSuffix(serverURL, "/") + ConnectPath
		header := http.Header{}
		header.Set("Authorization", "Bearer "+token)
		c, resp, err := websocket.Dial(ctx, url, &websocket.DialOptions{
			HTTPHeader:      header,
			CompressionMode: websocket.CompressionDisabled,
		})
		if err != nil {
			if resp != nil && resp.StatusCode == http.StatusNotFound {
				// Retrying cannot help: the URL names no node.
				return nil, &RejectError{Reason: fmt.Sprintf("%s returned HTTP 404: it is not a Gradient node, or --server has a wrong path; give the node's base URL, such as http://node:3000", url)}
			}
			if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
				reason := resp.Status
				if resp.Body != nil {
					body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
					if len(body) > 0 {
						reason = strings.TrimSpace(string(body))
					}
				}
				return nil, &RejectError{Reason: reason}
			}
			return nil, fmt.Errorf("connect to %q: %w", url, err)
		}
		return NewWebSocketConn(c), nil
	}
}

// Backoff computes jittered exponential delays between reconnects: the
// delay doubles from Min up to Max, and each is drawn uniformly from half
// to all of it, so that workers cut off at once do not reconnect at once.
type Backoff struct {
	Min, Max time.Duration
	attempt  int
}

// Next returns the delay before the next attempt.
func (b *Backoff) Next() time.Duration {
	d := b.Min << min(b.attempt, 30)
	if d > b.Max || d <= 0 {
		d = b.Max
	}
	b.attempt++
	half := d / 2
	return half + rand.N(half+1)
}

// Reset starts the delays from Min again, after a session succeeded.
func (b *Backoff) Reset() { b.attempt = 0 }

// RunConfig configures RunWorker.
type RunConfig struct {
	ServeConfig
	// MinBackoff and MaxBackoff bound the delay between reconnects.
	// Defaults 500 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
}

// RunWorker connects to a node with dial and serves sessions until ctx
// ends, reconnecting with jittered exponential backoff after a failed dial
// or an ended session. A build whose connection ends runs on until nix has
// built it, so the job's next offer finds the outputs in the store (see
// ServeConfig.Detached). It returns nil when ctx ends and a *RejectError
// as soon as the node rejects the worker, after it cancelled and waited
// for the builds that outlived their sessions.
func RunWorker(ctx context.Context, dial Dialer, cfg RunConfig) error {
	ctx, cancel := context.WithCancel(ctx)
	if cfg.Detached == nil {
		cfg.Detached = &DetachedBuilds{}
	}
	// Deferred calls run last in, first out: cancel the detached builds,
	// then wait for them.
	defer cfg.Detached.Wait()
	defer cancel()

	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	log := cfg.ServeConfig.withDefaults().Logger
	backoff := &Backoff{Min: cfg.MinBackoff, Max: cfg.MaxBackoff}
	// A node keeps a dropped worker's jobs for its lease, so the worker
	// tries to reconnect several times within it.
	cfg.welcomed = func(w *Welcome) {
		lease := time.Duration(w.LeaseMillis) * time.Millisecond
		backoff.Max = max(cfg.MinBackoff, min(cfg.MaxBackoff, lease/4))
	}
	for {
		conn, err := dial(ctx)
		connected := err == nil
		if connected {
			log.Debug("connection to the node opened")
			started := time.Now()
			err = Serve(ctx, conn, cfg.ServeConfig)
			conn.Close(websocket.StatusNormalClosure, "worker stopping")
			// A session that ran for a while was a success: start the
			// delays over.
			if time.Since(started) > cfg.MinBackoff*4 {
				backoff.Reset()
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		var reject *RejectError
		if errors.As(err, &reject) {
			log.Error("the node rejected this worker", "reason", reject.Reason)
			return err
		}

		delay := backoff.Next()
		if connected {
			log.Warn("connection to the node ended; reconnecting", "err", err, "delay", delay)
		} else {
			log.Warn("connecting to the node failed; retrying", "err", err, "delay", delay)
		}
		timer := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}
