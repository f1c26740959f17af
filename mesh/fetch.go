package mesh

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"path"
	"slices"

	"github.com/libp2p/go-libp2p/core/peer"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/narcompress"
	"github.com/gradient-ci/gradient/mesh/wire"
	"github.com/gradient-ci/gradient/protocol"
)

// ErrBadData is wrapped when a peer serves a narinfo or NAR that fails
// verification: a narinfo for another path or without a member's
// signature, a NAR whose size or hash differs from its narinfo, or a NAR
// file that does not decompress, such as an xz file with a dictionary
// over narcompress.MaxWindow. The peer is blocked for
// Config.BlockDuration. A Compression value that the mesh does not
// decompress is not bad data, and the next peer is tried.
var ErrBadData = errors.New("peer served bad data")

// Fetch copies storePath from the nearest peer that provides it into
// sink, which verifies it again and stores it. It tries hints first, such
// as the peer that announced it built the path, then the providers that
// FindProviders returns. A peer that serves bad data is blocked and the
// next one tried. Before the path, it copies the references that sink
// lacks in the same way, within Config.MaxReferenceDepth and
// Config.MaxClosurePaths, because a sink such as cache.Store takes a path
// only after its references. It returns the peer that served the path, or an error
// wrapping ErrNotFound when no peer served it, so the caller goes on to
// its upstreams. An error of sink other than a verification failure ends
// the fetch.
func (n *Node) Fetch(ctx context.Context, storePath string, sink protocol.NARSink, hints ...peer.ID) (peer.ID, error) {
	_, base, err := narinfo.SplitStorePath(storePath)
	if err != nil {
		return "", fmt.Errorf("fetch %q from the mesh: %w", storePath, err)
	}

	return n.fetch(ctx, narinfo.HashPart(base), storePath, sink, hints)
}

// FetchHashPart is Fetch for a path known only by its hash part, as in a
// request for "<hash part>.narinfo". It accepts the narinfo of any store
// path with that hash part.
func (n *Node) FetchHashPart(ctx context.Context, hashPart string, sink protocol.NARSink, hints ...peer.ID) (peer.ID, error) {
	if !narinfo.IsHashPart(hashPart) {
		return "", fmt.Errorf("fetch %q from the mesh: %w: invalid hash part", hashPart, narinfo.ErrInvalidStorePath)
	}

	return n.fetch(ctx, hashPart, "", sink, hints)
}

// closure bounds the references that one Fetch copies before the path
// itself.
type closure struct {
	// depth is the number of references between the requested path and
	// the one being fetched.
	depth int
	// remaining is the number of paths that may still be fetched.
	remaining *int
}

// fetch implements Fetch and FetchHashPart. storePath is empty when only
// the hash part is known.
func (n *Node) fetch(ctx context.Context, hashPart, storePath string, sink protocol.NARSink, hints []peer.ID) (peer.ID, error) {
	remaining := n.cfg.MaxClosurePaths
	return n.fetchInClosure(ctx, hashPart, storePath, sink, hints, closure{remaining: &remaining})
}

// fetchInClosure fetches one path of a closure: the requested path when
// cl.depth is zero, or one of its references.
func (n *Node) fetchInClosure(ctx context.Context, hashPart, storePath string, sink protocol.NARSink, hints []peer.ID, cl closure) (peer.ID, error) {
	name := storePath
	if name == "" {
		name = hashPart
	}

	logger := n.logger.With("store_path", name)

	f := n.Federation()
	hints = slices.DeleteFunc(slices.Clone(hints), func(id peer.ID) bool { return id == n.host.ID() || !f.Admits(id) })
	tried := map[peer.ID]bool{}

	try := func(ids []peer.ID) (peer.ID, error) {
		for _, c := range n.rank(ids) {
			id := peer.ID(c.Peer)
			if tried[id] {
				continue
			}
			tried[id] = true

			err := n.fetchFrom(ctx, id, storePath, hashPart, sink)

			// The sink takes a path only after its references, so fetch
			// them first, preferably from the same peer, and ask again.
			var missing *missingReferencesError
			if errors.As(err, &missing) {
				refHints := append([]peer.ID{id}, hints...)
				if err := n.fetchReferences(ctx, missing.refs, sink, refHints, cl); err != nil {
					return "", fmt.Errorf("fetch %q from the mesh: %w", name, err)
				}

				err = n.fetchFrom(ctx, id, storePath, hashPart, sink)
			}

			switch {
			case err == nil:
				n.metrics.fetches.WithLabelValues(fetchFetched).Inc()
				logger.Info("fetched a path from a peer", "remote_peer_id", id.String())
				return id, nil
			case errors.Is(err, ErrBadData):
				n.metrics.fetches.WithLabelValues(fetchBadData).Inc()
				n.block(id, errors.Is(err, narinfo.ErrNoTrustedSignature))
				logger.Warn("blocked a peer that served bad data", "remote_peer_id", id.String(), "error", err)
			case errors.Is(err, errSink):
				n.metrics.fetches.WithLabelValues(fetchError).Inc()
				return "", fmt.Errorf("fetch %q from %s: %w", name, id, err)
			case ctx.Err() != nil:
				return "", fmt.Errorf("fetch %q from the mesh: %w", name, ctx.Err())
			default:
				n.metrics.fetches.WithLabelValues(fetchError).Inc()
				logger.Info("fetching from a peer failed, trying the next", "remote_peer_id", id.String(), "error", err)
			}
		}

		return "", nil
	}

	if id, err := try(hints); id != "" || err != nil {
		return id, err
	}

	if id, err := try(n.findProviderIDs(ctx, hashPart)); id != "" || err != nil {
		return id, err
	}

	n.metrics.fetches.WithLabelValues(fetchNotFound).Inc()

	return "", fmt.Errorf("fetch %q from the mesh: %w", name, ErrNotFound)
}

// errSink marks an error of the sink that is not about the data.
var errSink = errors.New("storing the path failed")

// ErrClosureTooLarge is wrapped when the references that a fetch would
// copy first exceed Config.MaxClosurePaths or Config.MaxReferenceDepth.
var ErrClosureTooLarge = errors.New("closure exceeds the fetch limits")

// missingReferencesError is returned by fetchFrom when the sink lacks
// references of the path. The stream is closed before the NAR.
type missingReferencesError struct {
	refs []string
}

func (e *missingReferencesError) Error() string {
	return fmt.Sprintf("%d references are missing", len(e.refs))
}

// fetchReferences fetches the store paths refs into sink, each with its
// own missing references, within the limits of cl. A reference that no
// peer serves ends the fetch with an error wrapping ErrNotFound.
func (n *Node) fetchReferences(ctx context.Context, refs []string, sink protocol.NARSink, hints []peer.ID, cl closure) error {
	if cl.depth+1 > n.cfg.MaxReferenceDepth {
		return fmt.Errorf("%w: references nest deeper than %d", ErrClosureTooLarge, n.cfg.MaxReferenceDepth)
	}

	for _, ref := range refs {
		// An earlier reference may have brought this one along.
		have, err := sink.HasPath(ctx, ref)
		if err != nil {
			return fmt.Errorf("%w: %w", errSink, err)
		}

		if have {
			continue
		}

		if *cl.remaining <= 0 {
			return fmt.Errorf("%w: more than %d paths", ErrClosureTooLarge, n.cfg.MaxClosurePaths)
		}

		*cl.remaining--

		_, base, err := narinfo.SplitStorePath(ref)
		if err != nil {
			return fmt.Errorf("reference %q: %w", ref, err)
		}

		if _, err := n.fetchInClosure(ctx, narinfo.HashPart(base), ref, sink, hints, closure{depth: cl.depth + 1, remaining: cl.remaining}); err != nil {
			return fmt.Errorf("reference %q: %w", ref, err)
		}
	}

	return nil
}

// missingReferences returns the references of info, other than the path
// itself, that sink does not hold, as store paths.
func missingReferences(ctx context.Context, info *narinfo.NarInfo, sink protocol.NARSink) ([]string, error) {
	storeDir := path.Dir(info.StorePath)
	self := path.Base(info.StorePath)

	var missing []string

	for _, ref := range info.References {
		if ref == self {
			continue
		}

		have, err := sink.HasPath(ctx, storeDir+"/"+ref)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errSink, err)
		}

		if !have {
			missing = append(missing, storeDir+"/"+ref)
		}
	}

	return missing, nil
}

// block keeps id out of the candidates for BlockDuration. unsigned reports
// that its narinfo had no signature by a member's key, which a change of
// the federation's keys may cure, see SetFederation.
func (n *Node) block(id peer.ID, unsigned bool) {
	now := n.cfg.Now()

	n.mu.Lock()
	defer n.mu.Unlock()

	n.blocklist.Block(string(id), now)
	if unsigned {
		if n.unsignedBlocks == nil {
			n.unsignedBlocks = map[peer.ID]bool{}
		}
		n.unsignedBlocks[id] = true
	} else {
		// Bad bytes weigh more than a missing key: the block stays.
		delete(n.unsignedBlocks, id)
	}
}

// fetchFrom requests hashPart from one peer and streams it into sink.
func (n *Node) fetchFrom(ctx context.Context, id peer.ID, storePath, hashPart string, sink protocol.NARSink) error {
	dialCtx, cancel := context.WithTimeout(ctx, n.cfg.DialTimeout)
	s, err := n.host.NewStream(dialCtx, id, wire.NARProtocol)
	cancel()

	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	defer s.Close()

	// Closing the stream when ctx ends unblocks a read in progress.
	stop := context.AfterFunc(ctx, func() { s.Reset() })
	defer stop()

	if err := wire.WriteRequest(s, wire.Request{HashPart: hashPart}); err != nil {
		s.Reset()
		return fmt.Errorf("send request: %w", err)
	}

	if err := s.CloseWrite(); err != nil {
		s.Reset()
		return fmt.Errorf("send request: %w", err)
	}

	r := bufio.NewReader(&deadlineReader{s: s, timeout: n.cfg.ReadTimeout})

	resp, err := wire.ReadResponse(r, narinfo.MaxSize, n.cfg.MaxNARSize)
	switch {
	case errors.Is(err, wire.ErrMalformed):
		s.Reset()
		return fmt.Errorf("%w: %w", ErrBadData, err)
	case err != nil:
		s.Reset()
		return err
	case resp.Status == wire.StatusNotFound:
		return fmt.Errorf("peer does not hold the path")
	case resp.Status == wire.StatusError:
		return fmt.Errorf("peer failed: %q", resp.Message)
	}

	info, err := n.readNarInfo(r, resp, storePath, hashPart)
	if err != nil {
		s.Reset()
		return err
	}

	missing, err := missingReferences(ctx, info, sink)
	if err != nil {
		s.Reset()
		return err
	}

	if len(missing) > 0 {
		s.Reset()
		return &missingReferencesError{refs: missing}
	}

	nar, err := newVerifiedNAR(io.LimitReader(r, resp.FileSize), info, resp.FileSize)
	if err != nil {
		s.Reset()
		return err
	}
	defer nar.Close()

	// The member signatures that readNarInfo verified go along, so that
	// clients who trust the member can check the path in this cache too.
	pi := pathInfo(info)
	valid, err := narinfo.ValidSignatures(info, n.Federation().Keys())
	if err != nil {
		s.Reset()
		return fmt.Errorf("%w: %w", ErrBadData, err)
	}
	for _, sig := range valid {
		pi.Signatures = append(pi.Signatures, sig.String())
	}

	if err := sink.PutNAR(ctx, pi, nar); err != nil {
		s.Reset()

		if nar.err != nil {
			return nar.err
		}

		return fmt.Errorf("%w: %w", errSink, err)
	}

	return nil
}

// readNarInfo reads and verifies the narinfo that follows a response
// header. An empty storePath accepts any path with hashPart.
func (n *Node) readNarInfo(r io.Reader, resp wire.Response, storePath, hashPart string) (*narinfo.NarInfo, error) {
	text := make([]byte, resp.NarInfoSize)
	if _, err := io.ReadFull(r, text); err != nil {
		return nil, fmt.Errorf("read narinfo: %w", err)
	}

	info, err := narinfo.Parse(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadData, err)
	}

	switch {
	case storePath != "" && info.StorePath != storePath, narinfo.HashPart(info.StorePath) != hashPart:
		return nil, fmt.Errorf("%w: narinfo is for %q", ErrBadData, info.StorePath)
	case info.NarSize > uint64(n.cfg.MaxNARSize):
		return nil, fmt.Errorf("%w: NarSize %d exceeds the limit of %d bytes", ErrBadData, info.NarSize, n.cfg.MaxNARSize)
	case info.FileSize != 0 && info.FileSize != uint64(resp.FileSize):
		return nil, fmt.Errorf("%w: narinfo FileSize %d differs from the %d bytes sent", ErrBadData, info.FileSize, resp.FileSize)
	}

	if err := narinfo.Verify(info, n.Federation().Keys()); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadData, err)
	}

	return info, nil
}

// verifiedNAR decompresses a NAR file and checks the FileHash, NarSize
// and NarHash of its narinfo as it is read. At the end of the NAR it
// returns an error wrapping ErrBadData in place of io.EOF when they
// differ, so a sink that reads to the end stores nothing bad.
type verifiedNAR struct {
	info     *narinfo.NarInfo
	file     *hashingReader
	fileSize int64
	nar      io.Reader
	closer   func()
	narHash  hash.Hash
	narSize  uint64
	// err is the verification failure, kept for fetchFrom.
	err error
}

// newVerifiedNAR returns a verifiedNAR of file. For xz it reads the
// stream header from file, and it checks each block header with
// narcompress's dictionary bound before the decoder reads it, because the
// peer chooses the dictionary size.
func newVerifiedNAR(file io.Reader, info *narinfo.NarInfo, fileSize int64) (*verifiedNAR, error) {
	v := &verifiedNAR{info: info, fileSize: fileSize, narHash: sha256.New(), closer: func() {}}
	v.file = &hashingReader{r: file, h: sha256.New()}

	dec, err := narcompress.NewReader(info.Compression, v.file)

	switch {
	case errors.Is(err, narcompress.ErrUnsupported):
		return nil, err
	case err != nil && v.file.err != nil:
		// The stream failed, not the data.
		return nil, err
	case err != nil:
		return nil, fmt.Errorf("%w: decompress %s: %w", ErrBadData, info.Compression, err)
	}

	v.nar = dec
	v.closer = func() { dec.Close() }

	return v, nil
}

func (v *verifiedNAR) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}

	// Read at most one byte past NarSize, which is enough to see that a
	// NAR is too long.
	if remaining := v.info.NarSize + 1 - v.narSize; uint64(len(p)) > remaining {
		p = p[:remaining]
	}

	n, err := v.nar.Read(p)
	v.narHash.Write(p[:n])
	v.narSize += uint64(n)

	if v.narSize > v.info.NarSize {
		v.err = fmt.Errorf("%w: NAR is longer than NarSize %d", ErrBadData, v.info.NarSize)
		return 0, v.err
	}

	switch {
	case errors.Is(err, io.EOF):
		if verr := v.verify(); verr != nil {
			v.err = verr
			return n, verr
		}
		return n, io.EOF
	case err != nil:
		// A decoder error means the file is corrupt, unless the stream
		// itself failed.
		if v.file.err == nil {
			v.err = fmt.Errorf("%w: decompress: %w", ErrBadData, err)
			return n, v.err
		}
		return n, err
	}

	return n, nil
}

// verify checks the sizes and hashes once the NAR ended.
func (v *verifiedNAR) verify() error {
	if v.narSize != v.info.NarSize {
		return fmt.Errorf("%w: NAR has %d bytes, NarSize is %d", ErrBadData, v.narSize, v.info.NarSize)
	}

	if v.file.n != v.fileSize {
		return fmt.Errorf("%w: NAR file ended after %d of %d bytes", ErrBadData, v.file.n, v.fileSize)
	}

	if got := v.narHash.Sum(nil); !slices.Equal(got, v.info.NarHash.Digest()) {
		return fmt.Errorf("%w: NAR hash differs from NarHash", ErrBadData)
	}

	if v.info.FileHash != nil && v.info.FileHash.Algo() == nixhash.SHA256 {
		if got := v.file.h.Sum(nil); !slices.Equal(got, v.info.FileHash.Digest()) {
			return fmt.Errorf("%w: file hash differs from FileHash", ErrBadData)
		}
	}

	return nil
}

// Close releases the decompressor.
func (v *verifiedNAR) Close() { v.closer() }

// hashingReader hashes and counts what it reads, and keeps the read error
// of the underlying stream.
type hashingReader struct {
	r   io.Reader
	h   hash.Hash
	n   int64
	err error
}

func (r *hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	r.n += int64(n)

	if err != nil && !errors.Is(err, io.EOF) {
		r.err = err
	}

	return n, err
}

// pathInfo converts a verified narinfo to the PathInfo a NARSink takes.
func pathInfo(info *narinfo.NarInfo) protocol.PathInfo {
	storeDir := path.Dir(info.StorePath)

	pi := protocol.PathInfo{
		StorePath:  info.StorePath,
		NarHash:    info.NarHash.Format(nixhash.SRI, true),
		NarSize:    info.NarSize,
		References: []string{},
		CA:         info.CA,
	}

	for _, ref := range info.References {
		pi.References = append(pi.References, storeDir+"/"+ref)
	}

	if info.Deriver != "" {
		pi.Deriver = storeDir + "/" + info.Deriver
	}

	return pi
}
