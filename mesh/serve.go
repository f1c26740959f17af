package mesh

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"time"

	"github.com/libp2p/go-libp2p/core/network"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/wire"
)

// serveNAR serves one request of the /gradient/nar/1 protocol from the
// local cache.
func (n *Node) serveNAR(s network.Stream) {
	defer s.Close()

	remote := s.Conn().RemotePeer()
	logger := n.logger.With("remote_peer_id", remote.String())

	// The gater admits only members, but a Host passed in Config may have
	// no gater.
	if !n.Federation().Admits(remote) {
		logger.Warn("rejected a NAR request from a peer that is not a member")
		s.Reset()
		return
	}

	select {
	case n.serving <- struct{}{}:
		defer func() { <-n.serving }()
	default:
		n.writeResponse(s, wire.Response{Status: wire.StatusError, Message: "too many NAR streams, try another peer"}, logger)
		return
	}

	s.SetReadDeadline(time.Now().Add(n.cfg.ReadTimeout))

	req, err := wire.ReadRequest(bufio.NewReaderSize(s, wire.MaxLineSize))
	if err != nil {
		logger.Warn("invalid NAR request", "error", err)
		s.Reset()
		return
	}

	logger = logger.With("hash_part", req.HashPart)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	info, err := n.cfg.Cache.NarInfo(ctx, req.HashPart)
	if errors.Is(err, cache.ErrNotFound) {
		n.writeResponse(s, wire.Response{Status: wire.StatusNotFound}, logger)
		return
	}

	if err != nil {
		logger.Error("serve NAR: read narinfo failed", "error", err)
		n.writeResponse(s, wire.Response{Status: wire.StatusError, Message: "reading the narinfo failed"}, logger)
		return
	}

	file, size, err := n.cfg.Cache.OpenNAR(ctx, info.URL)
	if errors.Is(err, cache.ErrNotFound) {
		n.writeResponse(s, wire.Response{Status: wire.StatusNotFound}, logger)
		return
	}

	if err != nil {
		logger.Error("serve NAR: open NAR file failed", "url", info.URL, "error", err)
		n.writeResponse(s, wire.Response{Status: wire.StatusError, Message: "opening the NAR file failed"}, logger)
		return
	}
	defer file.Close()

	text := narinfo.Format(info)
	if !n.writeResponse(s, wire.Response{Status: wire.StatusOK, NarInfoSize: int64(len(text)), FileSize: size}, logger) {
		return
	}

	s.SetWriteDeadline(time.Now().Add(n.cfg.ReadTimeout))

	if _, err := s.Write(text); err != nil {
		logger.Warn("serve NAR: write narinfo failed", "error", err)
		s.Reset()
		return
	}

	// A deadline per chunk lets a large NAR take as long as it needs
	// while a stalled peer is dropped.
	w := &deadlineWriter{s: s, timeout: n.cfg.ReadTimeout}
	if copied, err := io.Copy(w, io.LimitReader(file, size)); err != nil || copied != size {
		logger.Warn("serve NAR: write NAR failed", "copied", copied, "size", size, "error", err)
		s.Reset()
		return
	}
}

func (n *Node) writeResponse(s network.Stream, resp wire.Response, logger *slog.Logger) bool {
	s.SetWriteDeadline(time.Now().Add(n.cfg.ReadTimeout))

	if err := wire.WriteResponse(s, resp); err != nil {
		logger.Warn("serve NAR: write response failed", "error", err)
		s.Reset()
		return false
	}

	return true
}

// deadlineWriter sets the stream's write deadline before each write.
type deadlineWriter struct {
	s       network.Stream
	timeout time.Duration
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	w.s.SetWriteDeadline(time.Now().Add(w.timeout))
	return w.s.Write(p)
}

// deadlineReader sets the stream's read deadline before each read.
type deadlineReader struct {
	s       network.Stream
	timeout time.Duration
}

func (r *deadlineReader) Read(p []byte) (int, error) {
	r.s.SetReadDeadline(time.Now().Add(r.timeout))
	return r.s.Read(p)
}
