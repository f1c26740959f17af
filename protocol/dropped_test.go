package protocol

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// attachPipe attaches a worker named id to th over a Pipe, runs the
// handshake from the worker's end and returns that end.
func attachPipe(t *testing.T, th *testHub, id string) Conn {
	t.Helper()
	c, err := attachInstance(t, th, id, "")
	if err != nil {
		t.Fatalf("read welcome: %v", err)
	}
	return c
}

// attachInstance attaches a worker named id whose Hello names instance,
// and returns the worker's end after the welcome, or the error that
// ended the handshake.
func attachInstance(t *testing.T, th *testHub, id, instance string) (Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	nodeEnd, workerEnd := Pipe()
	go th.Attach(context.Background(), nodeEnd, id, "pipe")
	hello := &Hello{Version: Version, Capabilities: []Capability{CapBuild}, Systems: []string{"x86_64-linux"}, MaxJobs: 1, CPUs: 1, Instance: instance}
	if err := workerEnd.Write(ctx, hello); err != nil {
		t.Fatalf("send hello: %v", err)
	}
	m, err := workerEnd.Read(ctx)
	if err != nil {
		return nil, err
	}
	if _, ok := m.(*Welcome); !ok {
		t.Fatalf("got a %s message, want welcome", m.Type())
	}
	return workerEnd, nil
}

// TestSecondProcessRefused checks that a second process with the token of
// a connected worker is refused, with a reason and one log line, while
// the same process reconnecting replaces its old connection.
func TestSecondProcessRefused(t *testing.T) {
	th := newTestHub(t, nil)
	if _, err := attachInstance(t, th, "w1", "process-a"); err != nil {
		t.Fatal(err)
	}
	first := th.waitJoined(t)

	for range 2 {
		_, err := attachInstance(t, th, "w1", "process-b")
		if websocket.CloseStatus(err) != websocket.StatusTryAgainLater {
			t.Fatalf("second process's handshake = %v, want close status %v", err, websocket.StatusTryAgainLater)
		}
		var ce websocket.CloseError
		if errors.As(err, &ce) && !strings.Contains(ce.Reason, "gradient worker register") {
			t.Errorf("close reason = %q, want it to say how to get a token", ce.Reason)
		}
	}
	select {
	case <-first.Done():
		t.Fatal("the first process was disconnected")
	default:
	}
	if n := th.logs.count("msg=\"connection refused: another process"); n != 1 {
		t.Errorf("hub logged the second process %d times, want once", n)
	}

	if _, err := attachInstance(t, th, "w1", "process-a"); err != nil {
		t.Fatalf("reconnect of the same process = %v, want a welcome", err)
	}
	if left := th.waitLeft(t); left != first {
		t.Fatal("Left reported another worker")
	}
}

// TestRemoteWorkerDropped checks which ends of a connection count as
// dropped, so that the node keeps the worker's jobs for a lease.
func TestRemoteWorkerDropped(t *testing.T) {
	tests := []struct {
		name string
		end  func(t *testing.T, th *testHub, worker Conn)
		want bool
	}{
		{"worker stopped", func(_ *testing.T, _ *testHub, c Conn) { c.Close(websocket.StatusNormalClosure, "worker stopping") }, false},
		{"connection cut", func(_ *testing.T, _ *testHub, c Conn) { c.Close(websocket.StatusGoingAway, "") }, true},
		{"node disconnected it", func(_ *testing.T, th *testHub, _ Conn) { th.Disconnect("w1", "token revoked") }, false},
		{"lease expired", func(_ *testing.T, th *testHub, _ Conn) { th.CheckLeases(time.Now().Add(24 * time.Hour)) }, false},
		{"replaced by a new connection", func(t *testing.T, th *testHub, _ Conn) { attachPipe(t, th, "w1") }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			th := newTestHub(t, nil)
			c := attachPipe(t, th, "w1")
			w := th.waitJoined(t)
			tt.end(t, th, c)
			if left := th.waitLeft(t); left != w {
				t.Fatalf("Left reported another worker")
			}
			if got := w.Dropped(); got != tt.want {
				t.Errorf("Dropped() = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestStoppedWorkerNotDropped stops a worker that is connected over a
// real WebSocket by ending Serve's context: the node gets a normal
// closure, not a dropped connection, so it need not wait a lease.
func TestStoppedWorkerNotDropped(t *testing.T) {
	th := newTestHub(t, map[string]string{"token-1": "w1"})
	url := startHTTPHub(t, th)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	conn, err := DialWebSocket(url, "token-1")(ctx)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	welcomed := make(chan struct{})
	go func() {
		served <- Serve(ctx, conn, ServeConfig{
			Setup: func(context.Context, *Welcome) (Worker, error) {
				close(welcomed)
				return &fakeWorker{}, nil
			},
			Systems:  []string{"x86_64-linux"},
			SpoolDir: t.TempDir(),
		})
	}()
	w := th.waitJoined(t)
	<-welcomed

	cancel()
	if left := th.waitLeft(t); left != w {
		t.Fatal("Left reported another worker")
	}
	if w.Dropped() {
		t.Errorf("Dropped() = true after the worker stopped, want false; hub log:\n%s", th.logs.String())
	}
	<-served
}

// TestBackoffFitsLease checks that once a node named its lease, the
// delays between reconnects stay within a quarter of it, so that a
// worker whose connection dropped comes back while the node keeps its
// jobs.
func TestBackoffFitsLease(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var dials []time.Time
	dial := func(ctx context.Context) (Conn, error) {
		dials = append(dials, time.Now())
		switch {
		case len(dials) == 1:
			// The first connection gets a welcome with a 2 s lease, then
			// drops.
			nodeEnd, workerEnd := Pipe()
			go func() {
				if _, err := nodeEnd.Read(ctx); err != nil {
					return
				}
				welcome := &Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: 1000, LeaseMillis: 2000, CachePath: "/cache/main"}
				if err := nodeEnd.Write(ctx, welcome); err != nil {
					return
				}
				nodeEnd.Close(websocket.StatusGoingAway, "connection cut")
			}()
			return workerEnd, nil
		case len(dials) < 8:
			return nil, errors.New("connection refused")
		default:
			cancel()
			return nil, ctx.Err()
		}
	}
	cfg := ServeConfig{Systems: []string{"x86_64-linux"}, SpoolDir: t.TempDir(),
		Setup: func(context.Context, *Welcome) (Worker, error) { return &fakeWorker{}, nil }}
	if err := RunWorker(ctx, dial, RunConfig{ServeConfig: cfg, MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Minute}); err != nil {
		t.Fatalf("RunWorker = %v", err)
	}

	// Without the lease the delays double from 50 ms: the seventh would
	// be 1.6 s to 3.2 s.
	for i := 1; i < len(dials); i++ {
		if gap := dials[i].Sub(dials[i-1]); gap > 700*time.Millisecond {
			t.Errorf("delay before dial %d = %v, want at most 500 ms, a quarter of the lease", i+1, gap)
		}
	}
}

// silentConn is a Conn whose pings never get a pong, as over a
// connection that went silent while it stays open.
type silentConn struct{ Conn }

func (silentConn) Ping(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestWorkerNoticesSilentNode checks that a worker whose pings go
// unanswered for half the lease closes the connection, so RunWorker
// connects again.
func TestWorkerNoticesSilentNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	nodeEnd, workerEnd := Pipe()
	served := make(chan error, 1)
	go func() {
		served <- Serve(ctx, silentConn{workerEnd}, ServeConfig{
			Systems:  []string{"x86_64-linux"},
			SpoolDir: t.TempDir(),
			Setup:    func(context.Context, *Welcome) (Worker, error) { return &fakeWorker{}, nil },
		})
	}()
	if _, err := nodeEnd.Read(ctx); err != nil {
		t.Fatalf("read hello: %v", err)
	}
	welcome := &Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: 50, LeaseMillis: 200, CachePath: "/cache/main"}
	if err := nodeEnd.Write(ctx, welcome); err != nil {
		t.Fatal(err)
	}

	select {
	case <-served:
	case <-ctx.Done():
		t.Fatal("Serve went on for 30s without answers to its pings")
	}
	_, err := nodeEnd.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "ping") {
		t.Errorf("the node end read %v, want a close that names the unanswered ping", err)
	}
}
