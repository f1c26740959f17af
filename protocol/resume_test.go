package protocol_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nar"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/protocol"
)

// chunkCounter counts the NARChunk bytes written through a Conn and cuts
// the connection abruptly, without a close frame, once cutAfter bytes
// went out (0 never cuts).
type chunkCounter struct {
	protocol.Conn
	raw      *websocket.Conn
	cutAfter int

	mu   sync.Mutex
	sent int
}

func (c *chunkCounter) Write(ctx context.Context, m protocol.Message) error {
	if err := c.Conn.Write(ctx, m); err != nil {
		return err
	}
	chunk, ok := m.(*protocol.NARChunk)
	if !ok {
		return nil
	}
	c.mu.Lock()
	c.sent += len(chunk.Data)
	cut := c.cutAfter > 0 && c.sent >= c.cutAfter
	c.mu.Unlock()
	if cut {
		c.raw.CloseNow()
	}
	return nil
}

func (c *chunkCounter) bytes() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent
}

// makeNAR returns the NAR of a regular file of size random bytes, which
// zstd cannot shrink, and its path info.
func makeNAR(t *testing.T, size int) ([]byte, protocol.PathInfo) {
	t.Helper()
	contents := make([]byte, size)
	rand.Read(contents)
	var buf bytes.Buffer
	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(size)}); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(contents); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(buf.Bytes())
	return buf.Bytes(), protocol.PathInfo{
		StorePath: "/nix/store/" + strings.Repeat("1", 32) + "-big",
		NarHash:   "sha256-" + base64.StdEncoding.EncodeToString(sum[:]),
		NarSize:   uint64(buf.Len()),
	}
}

func newCache(t *testing.T) *cache.Store {
	t.Helper()
	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	secret, _, err := cache.GenerateKey("resume-test-1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := cache.New(db, cache.Config{Name: "main", Dir: t.TempDir(), SecretKey: secret}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	return store
}

type uploadingWorker struct {
	nar  []byte
	info protocol.PathInfo
}

func (u *uploadingWorker) Evaluate(context.Context, protocol.EvalRequest, io.Writer) (protocol.EvalResult, error) {
	return protocol.EvalResult{}, errors.New("not an evaluator")
}

func (u *uploadingWorker) Build(ctx context.Context, req protocol.BuildRequest, log io.Writer, nars protocol.NARSink) (protocol.BuildResult, error) {
	if err := nars.PutNAR(ctx, u.info, bytes.NewReader(u.nar)); err != nil {
		return protocol.BuildResult{}, err
	}
	return protocol.BuildResult{Outputs: map[string]protocol.PathInfo{"out": u.info}}, nil
}

// TestNARUploadResumesAfterCut cuts the WebSocket in the middle of a NAR
// upload and checks that the next upload of the same NAR sends only the
// bytes the node did not receive, and that the cache stores the NAR after
// checking its NarHash.
func TestNARUploadResumesAfterCut(t *testing.T) {
	store := newCache(t)
	joined := make(chan *protocol.RemoteWorker, 4)
	hub, err := protocol.NewHub(protocol.HubConfig{
		Authenticate: func(ctx context.Context, token string) (string, error) { return "w1", nil },
		NARs:         store,
		UploadDir:    t.TempDir(),
		Joined:       func(w *protocol.RemoteWorker) { joined <- w },
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(hub)
	defer srv.Close()
	wsURL := strings.Replace(srv.URL, "http", "ws", 1) + protocol.ConnectPath

	narBytes, info := makeNAR(t, 3<<20)
	worker := &uploadingWorker{nar: narBytes, info: info}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// session connects a worker whose connection counts chunk bytes and
	// is cut after cutAfter of them.
	session := func(cutAfter int) (*chunkCounter, *protocol.RemoteWorker, chan error) {
		raw, _, err := websocket.Dial(ctx, wsURL, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer t"}}})
		if err != nil {
			t.Fatal(err)
		}
		conn := &chunkCounter{Conn: protocol.NewWebSocketConn(raw), raw: raw, cutAfter: cutAfter}
		served := make(chan error, 1)
		go func() {
			served <- protocol.Serve(ctx, conn, protocol.ServeConfig{
				Systems:  []string{"x86_64-linux"},
				SpoolDir: t.TempDir(),
				Setup:    func(context.Context, *protocol.Welcome) (protocol.Worker, error) { return worker, nil },
			})
		}()
		select {
		case rw := <-joined:
			return conn, rw, served
		case <-ctx.Done():
			t.Fatal("worker did not join")
			return nil, nil, nil
		}
	}

	first, rw, served := session(1 << 20)
	_, err = rw.Build(ctx, protocol.BuildRequest{DrvPath: "/nix/store/" + strings.Repeat("2", 32) + "-big.drv"}, io.Discard, store)
	if !errors.Is(err, protocol.ErrWorkerGone) {
		t.Fatalf("Build over a cut connection = %v, want ErrWorkerGone", err)
	}
	<-served
	if has, _ := store.HasPath(ctx, info.StorePath); has {
		t.Fatal("the cache holds the path after a cut upload")
	}
	kept := hub.NARBytesReceived()
	if kept == 0 || kept >= uint64(first.bytes())+1 {
		t.Fatalf("node kept %d bytes of the %d the worker sent before the cut, want some and no more", kept, first.bytes())
	}

	second, rw, _ := session(0)
	res, err := rw.Build(ctx, protocol.BuildRequest{DrvPath: "/nix/store/" + strings.Repeat("2", 32) + "-big.drv"}, io.Discard, store)
	if err != nil {
		t.Fatalf("Build after reconnecting = %v", err)
	}
	if res.Outputs["out"].StorePath != info.StorePath {
		t.Errorf("Build outputs = %+v, want %s", res.Outputs, info.StorePath)
	}

	total := hub.NARBytesReceived()
	if got, want := uint64(second.bytes()), total-kept; got != want {
		t.Errorf("second session sent %d chunk bytes, want %d (file size %d minus the %d kept)", got, want, total, kept)
	}
	if second.bytes() >= len(narBytes)*9/10 {
		t.Errorf("second session sent %d bytes of a %d-byte NAR: the upload restarted instead of resuming", second.bytes(), len(narBytes))
	}
	ni, err := store.NarInfo(ctx, strings.Repeat("1", 32))
	if err != nil {
		t.Fatalf("NarInfo after the resumed upload = %v", err)
	}
	if ni.NarSize != info.NarSize {
		t.Errorf("stored NarSize = %d, want %d", ni.NarSize, info.NarSize)
	}
}

// buildWithUpload attaches a worker that uploads info with narBytes to a
// hub over a Pipe, runs one build on it with store as the sink and
// returns the build's error.
func buildWithUpload(t *testing.T, store *cache.Store, narBytes []byte, info protocol.PathInfo) error {
	t.Helper()
	joined := make(chan *protocol.RemoteWorker, 1)
	hub, err := protocol.NewHub(protocol.HubConfig{
		Authenticate: func(ctx context.Context, token string) (string, error) { return "w1", nil },
		NARs:         store,
		UploadDir:    t.TempDir(),
		Joined:       func(w *protocol.RemoteWorker) { joined <- w },
	})
	if err != nil {
		t.Fatal(err)
	}
	worker := &uploadingWorker{nar: narBytes, info: info}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nodeEnd, workerEnd := protocol.Pipe()
	go hub.Attach(ctx, nodeEnd, "w1", "pipe")
	go protocol.Serve(ctx, workerEnd, protocol.ServeConfig{
		Systems:  []string{"x86_64-linux"},
		SpoolDir: t.TempDir(),
		Setup:    func(context.Context, *protocol.Welcome) (protocol.Worker, error) { return worker, nil },
	})
	rw := <-joined

	_, err = rw.Build(ctx, protocol.BuildRequest{DrvPath: "/nix/store/x.drv"}, io.Discard, store)
	return err
}

// TestNARUploadRejectsWrongHash checks that the node stores nothing when
// the NAR does not match the NarHash the worker claims.
func TestNARUploadRejectsWrongHash(t *testing.T) {
	store := newCache(t)
	narBytes, info := makeNAR(t, 1000)
	info.NarHash = "sha256-" + base64.StdEncoding.EncodeToString(make([]byte, 32))

	err := buildWithUpload(t, store, narBytes, info)
	if err == nil || !strings.Contains(err.Error(), "NarHash") {
		t.Errorf("Build with a wrong NarHash = %v, want an error naming NarHash", err)
	}
	if has, _ := store.HasPath(context.Background(), info.StorePath); has {
		t.Error("the cache holds a NAR whose NarHash did not match")
	}
}

// TestNARUploadDropsWorkerSignatures checks that the node does not keep
// signatures a worker sends with an upload: the node vouches for what it
// stores with its own key only.
func TestNARUploadDropsWorkerSignatures(t *testing.T) {
	store := newCache(t)
	narBytes, info := makeNAR(t, 1000)
	info.Signatures = []string{"cache.nixos.org-1:" + base64.StdEncoding.EncodeToString(make([]byte, 64))}

	if err := buildWithUpload(t, store, narBytes, info); err != nil {
		t.Fatalf("Build: %v", err)
	}
	ni, err := store.NarInfo(context.Background(), narinfo.HashPart(info.StorePath))
	if err != nil {
		t.Fatal(err)
	}
	if len(ni.Signatures) != 1 || ni.Signatures[0].Name != "resume-test-1" {
		t.Errorf("stored signatures = %v, want only the node's resume-test-1", ni.Signatures)
	}
}
