package protocol

import (
	"context"
	"io"
	"sync"
	"testing"

	"github.com/coder/websocket"
)

// notifySink is a memSink that records OutputsBuilt.
type notifySink struct {
	memSink
	built chan struct{}
	once  sync.Once
}

func (n *notifySink) OutputsBuilt() { n.once.Do(func() { close(n.built) }) }

// A worker with one slot reports a build's outputs built before their
// upload ends, and takes the next build while the upload goes on.
func TestJobBuiltFreesSlot(t *testing.T) {
	th := newTestHub(t, nil)
	uploadDone := make(chan struct{})
	w := &fakeWorker{build: func(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error) {
		if n, ok := nars.(BuiltNotifier); ok {
			n.OutputsBuilt()
		}
		if req.DrvPath == "/nix/store/a.drv" {
			<-uploadDone
		}
		return BuildResult{}, nil
	}}
	servePipe(t, th, "w1", w, ServeConfig{MaxJobs: 1})
	rw := th.waitJoined(t)

	first := &notifySink{built: make(chan struct{})}
	firstErr := make(chan error, 1)
	go func() {
		_, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/a.drv"}, io.Discard, first)
		firstErr <- err
	}()
	<-first.built

	second := &notifySink{built: make(chan struct{})}
	if _, err := rw.Build(context.Background(), BuildRequest{DrvPath: "/nix/store/b.drv"}, io.Discard, second); err != nil {
		t.Fatalf("Build during the first one's upload = %v, want success", err)
	}
	select {
	case <-second.built:
	default:
		t.Error("the node's sink of the second build was not told its outputs were built")
	}

	close(uploadDone)
	if err := <-firstErr; err != nil {
		t.Errorf("first Build = %v, want success", err)
	}
}

// recordingConn is a Conn that records what is written to it.
type recordingConn struct {
	mu      sync.Mutex
	written []Message
}

func (c *recordingConn) Read(ctx context.Context) (Message, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

func (c *recordingConn) Write(ctx context.Context, m Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.written = append(c.written, m)
	return nil
}

func (c *recordingConn) Close(websocket.StatusCode, string) error { return nil }

// A worker sends JobBuilt only to a node whose Welcome accepts it, so a
// node from before the message does not close the connection over it.
func TestJobBuiltOnlyWhenWelcomed(t *testing.T) {
	for _, accepts := range []bool{false, true} {
		conn := &recordingConn{}
		s := &workerSession{
			conn: conn, welcome: &Welcome{JobBuilt: accepts}, ctx: context.Background(),
			jobs: map[uint64]context.CancelFunc{7: func() {}}, uploading: map[uint64]bool{},
		}
		(&remoteSink{s: s, job: 7}).OutputsBuilt()

		want := 0
		if accepts {
			want = 1
		}
		if len(conn.written) != want {
			t.Errorf("Welcome.JobBuilt %t: worker wrote %v, want %d JobBuilt", accepts, conn.written, want)
		}
		if accepts && (len(conn.written) != 1 || conn.written[0].Type() != TypeJobBuilt) {
			t.Errorf("Welcome.JobBuilt %t: worker wrote %v, want a JobBuilt", accepts, conn.written)
		}
		if s.uploading[7] != accepts {
			t.Errorf("Welcome.JobBuilt %t: job counted as uploading = %t, want %t", accepts, s.uploading[7], accepts)
		}
	}
}
