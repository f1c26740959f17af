package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"golang.org/x/sync/errgroup"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/cache/upstream"
)

// ErrUpstreamUnavailable is wrapped when a narinfo or NAR is not in the
// cache and no upstream delivered it, but at least one upstream failed
// instead of answering that it does not hold it. The miss may be
// temporary, so the handler answers 502 or 504 instead of 404.
var ErrUpstreamUnavailable = errors.New("upstream unavailable")

// pullConcurrency bounds the references of one narinfo pulled at once.
const pullConcurrency = 8

// pathMeta is stored beside each narinfo for retention.
type pathMeta struct {
	// Origin is "upload" or "upstream".
	Origin string `json:"origin"`
	// Upstream is the base URL the path was pulled from.
	Upstream string `json:"upstream,omitempty"`
	// LastUsed is the Unix time in seconds of the last read that
	// garbage collection has recorded, or of the commit.
	LastUsed int64 `json:"last_used"`
}

const (
	originUpload   = "upload"
	originUpstream = "upstream"
)

// pullRecord names the upstream file of a pulled narinfo whose NAR is not
// downloaded yet. It is keyed by the local NAR file name.
type pullRecord struct {
	URL      string `json:"url"`
	Upstream string `json:"upstream"`
	HashPart string `json:"hash_part"`
}

func (s *Store) metaKey(hashPart string) []byte {
	return []byte(s.keyPrefix + "meta/" + hashPart)
}

func (s *Store) pullKey(fileName string) []byte {
	return []byte(s.keyPrefix + "pull/" + fileName)
}

// compressionExtensions maps the Compression field of a pulled narinfo to
// the extension of its local file name.
var compressionExtensions = map[string]string{
	"none":  ".nar",
	"xz":    ".nar.xz",
	"zstd":  ".nar.zst",
	"bzip2": ".nar.bz2",
}

// lookupNarInfo returns the .narinfo file of hashPart from the cache, or
// fetches it from the peers, or pulls it from the upstreams, in this
// order, and reports which it did (resultHit, resultPeer or
// resultPulled). Errors wrap ErrNotFound for a true miss and
// ErrUpstreamUnavailable when an upstream or a peer fetch failed.
func (s *Store) lookupNarInfo(ctx context.Context, hashPart string) ([]byte, string, error) {
	data, err := s.localNarInfo(ctx, hashPart)
	if err == nil {
		return data, resultHit, nil
	}

	if !errors.Is(err, ErrNotFound) || !narinfo.IsHashPart(hashPart) {
		return nil, "", err
	}

	// A peer fault is kept, so that a miss of the upstreams is not
	// answered as final.
	var peerErr error

	if peers := s.currentPeers(); peers != nil {
		data, peerErr = s.fetchFromPeers(ctx, peers, hashPart)
		if peerErr == nil {
			return data, resultPeer, nil
		}

		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}

		if errors.Is(peerErr, ErrNotFound) {
			peerErr = nil
		}
	}

	if len(s.currentSettings().upstreams) == 0 || s.negative.contains(hashPart, s.cfg.Clock.Now()) {
		return nil, "", missAfterPeers(err, peerErr)
	}

	data, err = s.pullNarInfo(ctx, hashPart, nil)
	if err != nil {
		return nil, "", missAfterPeers(err, peerErr)
	}

	return data, resultPulled, nil
}

// missAfterPeers returns err, the miss of the cache or its upstreams,
// turned into ErrUpstreamUnavailable when peerErr says a peer fetch
// failed, so the handler answers 502 in place of a 404 that nix would
// remember.
func missAfterPeers(err, peerErr error) error {
	if peerErr == nil || !errors.Is(err, ErrNotFound) {
		return err
	}

	return fmt.Errorf("%w: %w", ErrUpstreamUnavailable, peerErr)
}

// localNarInfo returns the stored .narinfo file of hashPart when every
// reference it names is stored too, and records the read for retention.
// A narinfo with a missing reference is reported as not found.
func (s *Store) localNarInfo(ctx context.Context, hashPart string) ([]byte, error) {
	data, err := s.readNarInfo(ctx, hashPart, true)
	if err != nil {
		return nil, err
	}

	s.markUsed(hashPart)

	return data, nil
}

// referencesOf returns the base names on the References line of a
// .narinfo file that the cache formatted.
func referencesOf(data []byte) [][]byte {
	const key = "\nReferences: "

	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil
	}

	line := data[i+len(key):]
	if end := bytes.IndexByte(line, '\n'); end >= 0 {
		line = line[:end]
	}

	return bytes.Fields(line)
}

// markUsed records a read of hashPart for least-recently-used eviction.
// It writes the map at most once a minute per path, so hits stay cheap.
func (s *Store) markUsed(hashPart string) {
	now := s.cfg.Clock.Now().Unix()

	if last, ok := s.lastUsed.Load(hashPart); ok && now-last.(int64) < 60 {
		return
	}

	s.lastUsed.Store(hashPart, now)
}

// pullNarInfo fetches the narinfo of hashPart from the upstreams, pulls
// the narinfos of its references first, and stores it. Concurrent calls
// for one hash part share one fetch, which runs on the Store's background
// context within Config.ClosureTimeout, so a caller that gives up does
// not cancel it for the others. ancestors are the paths whose pull waits
// for this one, to detect reference cycles.
func (s *Store) pullNarInfo(ctx context.Context, hashPart string, ancestors []string) ([]byte, error) {
	ch := s.narInfoFlights.DoChan(hashPart, func() (any, error) {
		fetchCtx, cancel := context.WithTimeout(s.background, s.cfg.ClosureTimeout)
		defer cancel()

		s.metrics.inflight.WithLabelValues("narinfo").Inc()
		defer s.metrics.inflight.WithLabelValues("narinfo").Dec()

		return s.fetchNarInfo(fetchCtx, hashPart, ancestors)
	})

	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case result := <-ch:
		if result.Err != nil {
			return nil, result.Err
		}

		return result.Val.([]byte), nil
	}
}

func (s *Store) fetchNarInfo(ctx context.Context, hashPart string, ancestors []string) ([]byte, error) {
	// Another flight may have stored it between the caller's lookup and
	// this one.
	if data, err := s.localNarInfo(ctx, hashPart); err == nil {
		return data, nil
	}

	info, narURL, up, err := s.askUpstreams(ctx, hashPart)
	if errors.Is(err, ErrNotFound) {
		s.negative.add(hashPart, s.cfg.Clock.Now())
	}

	if err != nil {
		return nil, err
	}

	if err := s.pullReferences(ctx, info, append(ancestors, hashPart)); err != nil {
		return nil, fmt.Errorf("pull narinfo %q: %w: %w", hashPart, ErrUpstreamUnavailable, err)
	}

	data, err := s.storePulledNarInfo(info, narURL, up.URL())
	if err != nil {
		return nil, fmt.Errorf("pull narinfo %q: %w", hashPart, err)
	}

	s.logger.Debug("pulled narinfo", "store_path", info.StorePath, "upstream", up.URL())

	return data, nil
}

// pullReferences pulls the references of info that the cache does not
// hold, so the narinfo is served only with its closure.
func (s *Store) pullReferences(ctx context.Context, info *narinfo.NarInfo, ancestors []string) error {
	self := narinfo.HashPart(info.StorePath)

	var refs []string

	for _, ref := range info.References {
		if hashPart := narinfo.HashPart(ref); hashPart != self {
			refs = append(refs, s.cfg.StoreDir+"/"+ref)
		}
	}

	missing, err := s.Missing(ctx, refs)
	if err != nil {
		return err
	}

	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(pullConcurrency)

	for _, ref := range missing {
		hashPart := narinfo.HashPart(ref)

		for _, ancestor := range ancestors {
			if ancestor == hashPart {
				return fmt.Errorf("reference cycle through %q", ref)
			}
		}

		g.Go(func() error {
			// A reference that the upstreams lack is their fault, not a
			// miss of the path itself, so ErrNotFound is not wrapped.
			if _, err := s.pullNarInfo(gctx, hashPart, ancestors); err != nil {
				return fmt.Errorf("reference %q: %v", ref, err)
			}

			return nil
		})
	}

	return g.Wait()
}

// upstreamAnswer is one upstream's answer to a narinfo request.
type upstreamAnswer struct {
	up     *upstream.Upstream
	info   *narinfo.NarInfo
	narURL string
	err    error
}

// askUpstreams asks every upstream whose breaker is closed for the
// narinfo of hashPart at once, within Config.UpstreamBudget. It returns
// the valid narinfo of the upstream with the lowest priority number, and
// returns early once no upstream still pending could beat the best one.
func (s *Store) askUpstreams(ctx context.Context, hashPart string) (*narinfo.NarInfo, string, *upstream.Upstream, error) {
	ups := s.currentSettings().upstreams

	ctx, cancel := context.WithTimeout(ctx, s.cfg.UpstreamBudget)
	defer cancel()

	answers := make(chan upstreamAnswer, len(ups))
	pending := map[*upstream.Upstream]bool{}

	for _, up := range ups {
		pending[up] = true

		go func() {
			start := time.Now()
			info, narURL, err := up.NarInfo(ctx, hashPart)

			s.metrics.upstreamLatency.WithLabelValues(up.URL(), "narinfo").Observe(time.Since(start).Seconds())
			answers <- upstreamAnswer{up: up, info: info, narURL: narURL, err: err}
		}()
	}

	var (
		best   *upstreamAnswer
		faults []error
	)

	for len(pending) > 0 {
		answer := <-answers
		delete(pending, answer.up)

		switch {
		case answer.err == nil:
			if best == nil || answer.up.Priority() < best.up.Priority() {
				best = &answer
			}
		case errors.Is(answer.err, upstream.ErrNotFound):
		default:
			s.countUpstreamError(answer.up.URL(), answer.err)
			faults = append(faults, answer.err)
		}

		if best != nil && !anyBetter(pending, best.up.Priority()) {
			break
		}
	}

	switch {
	case best != nil:
		return best.info, best.narURL, best.up, nil
	case len(faults) > 0:
		return nil, "", nil, fmt.Errorf("pull narinfo %q: %w: %w", hashPart, ErrUpstreamUnavailable, errors.Join(faults...))
	default:
		return nil, "", nil, fmt.Errorf("pull narinfo %q: %w on any upstream", hashPart, ErrNotFound)
	}
}

// anyBetter reports whether a pending upstream has a lower priority
// number than priority.
func anyBetter(pending map[*upstream.Upstream]bool, priority int) bool {
	for up := range pending {
		if up.Priority() < priority {
			return true
		}
	}

	return false
}

// countUpstreamError counts an upstream failure by reason.
func (s *Store) countUpstreamError(upstreamURL string, err error) {
	reason := "transport"

	switch {
	case errors.Is(err, upstream.ErrSkipped):
		reason = "skipped"
	case errors.Is(err, context.DeadlineExceeded):
		reason = "timeout"
	case errors.Is(err, upstream.ErrInvalid):
		reason = "invalid"
	case errors.Is(err, ErrHashMismatch):
		reason = "mismatch"
	}

	s.metrics.upstreamErrors.WithLabelValues(upstreamURL, reason).Inc()
	s.logger.Warn("upstream request failed", "upstream", upstreamURL, "reason", reason, "error", err)
}

// storePulledNarInfo signs a pulled narinfo, keeping its signatures,
// points its URL at a local NAR file name and stores it. Unless that file
// is already stored, a pull record names the upstream file for the first
// download.
func (s *Store) storePulledNarInfo(info *narinfo.NarInfo, narURL, upstreamURL string) ([]byte, error) {
	ext, ok := compressionExtensions[info.Compression]
	if !ok {
		return nil, fmt.Errorf("%w: %w: unsupported Compression %q", ErrUpstreamUnavailable, upstream.ErrInvalid, info.Compression)
	}

	if info.NarSize > uint64(s.cfg.MaxNARSize) {
		return nil, fmt.Errorf("%w: NarSize %d exceeds the limit of %d bytes", ErrTooLarge, info.NarSize, s.cfg.MaxNARSize)
	}

	// The file is named by the hash of its bytes when the upstream gives
	// one, and by the hash of the NAR otherwise: both identify the bytes
	// that the download checks.
	fileName := narFileName("sha256:"+formatNix32Digest(info.NarHash), ext)
	if info.FileHash != nil && info.FileHash.Algo() == nixhash.SHA256 {
		fileName = narFileName("sha256:"+formatNix32Digest(info.FileHash), ext)
	}

	info.URL = "nar/" + fileName

	s.gcMu.RLock()
	defer s.gcMu.RUnlock()

	hashPart := narinfo.HashPart(info.StorePath)

	unlock := s.lockPath(hashPart)
	defer unlock()

	// A stored path is kept as it is, and a pull never replaces it.
	stored, err := s.narInfoBytes(context.Background(), hashPart)

	switch {
	case err == nil:
		return storedForPull(stored, info)
	case !errors.Is(err, ErrNotFound):
		return nil, err
	}

	record, err := s.narRecord(fileName)
	haveFile := err == nil

	switch {
	case haveFile:
		if record.NarHash != formatNix32(info.NarHash) || record.NarSize != info.NarSize {
			return nil, fmt.Errorf("%w: %w: stored file %q has another NAR", ErrUpstreamUnavailable, upstream.ErrInvalid, fileName)
		}

		info.FileHash = mustNix32Hash(record.FileHash)
		info.FileSize = record.FileSize
	case !errors.Is(err, badger.ErrKeyNotFound):
		return nil, err
	}

	if err := narinfo.Sign(info, s.key); err != nil {
		return nil, err
	}

	data := narinfo.Format(info)

	meta, err := json.Marshal(pathMeta{Origin: originUpstream, Upstream: upstreamURL, LastUsed: s.cfg.Clock.Now().Unix()})
	if err != nil {
		return nil, err
	}

	pull, err := json.Marshal(pullRecord{URL: narURL, Upstream: upstreamURL, HashPart: hashPart})
	if err != nil {
		return nil, err
	}

	err = s.db.Update(func(txn *badger.Txn) error {
		if err := txn.Set(s.narInfoKey(hashPart), data); err != nil {
			return err
		}

		if err := txn.Set(s.metaKey(hashPart), meta); err != nil {
			return err
		}

		if haveFile {
			return nil
		}

		return txn.Set(s.pullKey(fileName), pull)
	})
	if err != nil {
		return nil, fmt.Errorf("write narinfo %q: %w", hashPart, err)
	}

	if haveFile {
		s.pathsAdded(info.StorePath)
	}

	return data, nil
}

// storedForPull returns the stored .narinfo file of the path that info
// describes, unless info gives it another NarHash or NarSize.
func storedForPull(stored []byte, info *narinfo.NarInfo) ([]byte, error) {
	storedInfo, err := narinfo.Parse(bytes.NewReader(stored))
	if err != nil {
		return nil, fmt.Errorf("read narinfo %q: stored narinfo is invalid: %w", info.StorePath, err)
	}

	if err := compareStoredPath(storedInfo, info); !errors.Is(err, errPathStored) {
		return nil, fmt.Errorf("%w: %w", ErrUpstreamUnavailable, err)
	}

	return stored, nil
}

func formatNix32Digest(h *nixhash.HashWithEncoding) string {
	return h.Format(nixhash.NixBase32, false)
}
