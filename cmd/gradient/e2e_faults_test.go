package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/web"
)

// dialWorker opens the node's worker endpoint with a worker token, as a
// hand-written client that speaks the protocol frame by frame.
func dialWorker(ctx context.Context, t *testing.T, n *node, token string) *websocket.Conn {
	t.Helper()
	c, resp, err := websocket.Dial(ctx, n.url()+"/api/v1/workers/connect", &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + token}},
	})
	if err != nil {
		t.Fatalf("dial the worker endpoint: %v", err)
	}
	if resp.Body != nil {
		resp.Body.Close()
	}
	t.Cleanup(func() { c.CloseNow() })
	return c
}

// readClose reads frames from c until the node closes it, and returns the
// close status, the reason and the messages read before.
func readClose(ctx context.Context, t *testing.T, c *websocket.Conn) (websocket.StatusCode, string, []protocol.Message) {
	t.Helper()
	var got []protocol.Message
	for {
		_, frame, err := c.Read(ctx)
		if err != nil {
			var ce websocket.CloseError
			if !errors.As(err, &ce) {
				t.Fatalf("read from the node: %v, want a close frame", err)
			}
			return ce.Code, ce.Reason, got
		}
		m, err := protocol.Decode(frame)
		if err != nil {
			t.Fatalf("protocol.Decode(frame from the node) = %v", err)
		}
		got = append(got, m)
	}
}

// hello is a valid Hello that no job of the tests matches, because no
// flake of the tests builds for its system.
func hello(version int) *protocol.Hello {
	return &protocol.Hello{
		Version:      version,
		Capabilities: []protocol.Capability{protocol.CapBuild},
		Systems:      []string{"riscv64-linux"},
		MaxJobs:      1,
		CPUs:         1,
		MemoryBytes:  1 << 30,
	}
}

// writeMessage sends m as one binary frame.
func writeMessage(ctx context.Context, t *testing.T, c *websocket.Conn, m protocol.Message) {
	t.Helper()
	frame, err := protocol.Encode(m)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, websocket.MessageBinary, frame); err != nil {
		t.Fatalf("write %s: %v", m.Type(), err)
	}
}

// TestWorkerProtocolFaults connects clients with an old protocol version
// and with garbage frames to a real node while a real `gradient worker`
// runs an evaluation. Each client is closed with a reason and logged once,
// and the evaluation completes on the real worker, whose connection
// stays up.
func TestWorkerProtocolFaults(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	procs := registerWorkers(t, n, "w1")
	tokens := map[string]string{}
	for _, name := range []string{"old-version", "garbage-first", "garbage-later", "text-frame"} {
		tokens[name] = strings.TrimSpace(n.mustCLI("worker", "register", name))
	}

	n.mustCLI("project", "create", "demo/faults", "--flake", writeFlake(t, slowFlake))
	n.mustCLI("project", "evaluate", "demo/faults")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tests := []struct {
		name       string
		send       func(c *websocket.Conn)
		wantStatus websocket.StatusCode
		wantReason string
		// wantLog is the message the node logs for the rejection.
		wantLog string
	}{{
		name:       "old-version",
		send:       func(c *websocket.Conn) { writeMessage(ctx, t, c, hello(protocol.Version-1)) },
		wantStatus: websocket.StatusPolicyViolation,
		wantReason: "protocol version 0 is not supported",
		wantLog:    `msg="worker rejected"`,
	}, {
		name: "garbage-first",
		send: func(c *websocket.Conn) {
			if err := c.Write(ctx, websocket.MessageBinary, []byte("\xff\x00 not cbor at all")); err != nil {
				t.Fatal(err)
			}
		},
		wantStatus: websocket.StatusUnsupportedData,
		wantReason: "malformed frame",
		wantLog:    `msg="worker rejected"`,
	}, {
		name: "garbage-later",
		send: func(c *websocket.Conn) {
			writeMessage(ctx, t, c, hello(protocol.Version))
			_, frame, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("read welcome: %v", err)
			}
			if m, err := protocol.Decode(frame); err != nil || m.Type() != (&protocol.Welcome{}).Type() {
				t.Fatalf("first message from the node = %v, %v; want a welcome", m, err)
			}
			// A frame that is valid CBOR but names no known message.
			if err := c.Write(ctx, websocket.MessageBinary, []byte("\xa2dtypedjunkdbody\x41\x00")); err != nil {
				t.Fatal(err)
			}
		},
		wantStatus: websocket.StatusUnsupportedData,
		wantReason: "unknown message type",
		wantLog:    `msg="malformed frame from worker: closing the connection"`,
	}, {
		name: "text-frame",
		send: func(c *websocket.Conn) {
			if err := c.Write(ctx, websocket.MessageText, []byte(`{"type":"hello"}`)); err != nil {
				t.Fatal(err)
			}
		},
		wantStatus: websocket.StatusUnsupportedData,
		wantReason: "text frame",
		wantLog:    `msg="worker rejected"`,
	}}
	for _, tt := range tests {
		c := dialWorker(ctx, t, n, tokens[tt.name])
		tt.send(c)
		status, reason, msgs := readClose(ctx, t, c)
		if status != tt.wantStatus || !strings.Contains(reason, tt.wantReason) {
			t.Errorf("%s: closed with %d %q, want %d with %q", tt.name, status, reason, tt.wantStatus, tt.wantReason)
		}
		if tt.name == "old-version" {
			if len(msgs) != 1 || msgs[0].Type() != (&protocol.Reject{}).Type() ||
				!strings.Contains(msgs[0].(*protocol.Reject).Reason, tt.wantReason) {
				t.Errorf("old-version: messages before the close = %+v, want one reject with %q", msgs, tt.wantReason)
			}
		}
	}

	show := waitEvaluation(t, n, "demo/faults", isFinal)
	checkAllBuilt(t, n, show)

	// Each rejection is logged once, on one line naming the worker.
	log := n.logText()
	for _, tt := range tests {
		lines := 0
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "worker_id="+tt.name+" ") && strings.Contains(line, "level=WARN") {
				lines++
				if !strings.Contains(line, tt.wantLog) {
					t.Errorf("%s: node logged %q, want %s", tt.name, line, tt.wantLog)
				}
			}
		}
		if lines != 1 {
			t.Errorf("%s: node logged %d warnings, want 1", tt.name, lines)
		}
	}
	if strings.Contains(procs["w1"].logText(), "reconnecting") {
		t.Errorf("the real worker lost its connection while the bad clients were rejected:\n%s", procs["w1"].logText())
	}
	var ws []web.WorkerInfo
	decodeJSON(t, n.mustCLI("worker", "list", "--json"), &ws)
	for _, w := range ws {
		if w.Name == "w1" && (w.State != web.WorkerConnected || w.Builds != 3) {
			t.Errorf("worker w1 = %+v, want connected with 3 builds", w)
		}
	}
}

// cutProxy forwards loopback TCP connections to a node. It cuts the first
// worker session once cutAfter bytes went from the worker to the node,
// unless cutAfter is 0, and counts the bytes each later worker session
// sends. cutNow cuts the open worker sessions. With bytesPerSecond set,
// worker sessions send to the node at about that rate.
type cutProxy struct {
	ln             net.Listener
	target         string
	cutAfter       int64
	bytesPerSecond int64

	mu sync.Mutex
	// open holds both connections of each open worker session.
	open map[net.Conn]net.Conn
	// sessions counts the worker sessions; after holds the bytes that
	// worker sessions after the cut sent to the node.
	sessions int
	cut      bool
	after    int64
	cutDone  chan struct{}
}

func startCutProxy(t *testing.T, target string, cutAfter int64) *cutProxy {
	t.Helper()
	return startProxy(t, &cutProxy{target: target, cutAfter: cutAfter})
}

// startThrottleProxy starts a cutProxy that cuts nothing and passes worker
// sessions' bytes to the node at about bytesPerSecond.
func startThrottleProxy(t *testing.T, target string, bytesPerSecond int64) *cutProxy {
	t.Helper()
	return startProxy(t, &cutProxy{target: target, bytesPerSecond: bytesPerSecond})
}

func startProxy(t *testing.T, p *cutProxy) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.ln, p.cutDone, p.open = ln, make(chan struct{}), map[net.Conn]net.Conn{}
	var wg sync.WaitGroup
	var conns sync.Map
	t.Cleanup(func() {
		ln.Close()
		conns.Range(func(k, _ any) bool { k.(net.Conn).Close(); return true })
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Store(c, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conns.Delete(c)
				p.forward(c, &conns)
			}()
		}
	}()
	return p
}

func (p *cutProxy) url() string { return "http://" + p.ln.Addr().String() }

// forward copies c to the node and back. A connection whose request is
// the worker endpoint is a worker session: its upstream bytes are counted.
func (p *cutProxy) forward(c net.Conn, conns *sync.Map) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	conns.Store(up, true)
	defer conns.Delete(up)
	defer up.Close()

	go func() {
		io.Copy(c, up)
		c.Close()
	}()

	buf := make([]byte, 32<<10)
	n, err := c.Read(buf)
	if err != nil {
		return
	}
	session := bytes.Contains(buf[:n], []byte("/api/v1/workers/connect"))
	first := false
	if session {
		p.mu.Lock()
		p.sessions++
		first = p.sessions == 1 && p.cutAfter > 0
		p.open[c] = up
		p.mu.Unlock()
		defer func() {
			p.mu.Lock()
			delete(p.open, c)
			p.mu.Unlock()
		}()
	}
	var sent int64
	for {
		if _, err := up.Write(buf[:n]); err != nil {
			return
		}
		sent += int64(n)
		if session && p.bytesPerSecond > 0 {
			time.Sleep(time.Duration(int64(n) * int64(time.Second) / p.bytesPerSecond))
		}
		if session && !first {
			p.mu.Lock()
			if p.cut {
				p.after += int64(n)
			}
			p.mu.Unlock()
		}
		if first && sent >= p.cutAfter {
			p.mu.Lock()
			p.cut = true
			p.mu.Unlock()
			close(p.cutDone)
			return
		}
		n, err = c.Read(buf)
		if err != nil {
			return
		}
	}
}

// cutNow closes both connections of each open worker session.
func (p *cutProxy) cutNow() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c, up := range p.open {
		c.Close()
		up.Close()
	}
}

// bytesAfterCut returns what worker sessions after the cut sent.
func (p *cutProxy) bytesAfterCut() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.after
}

// bigFlake builds one output of 4 MB that zstd cannot compress.
const bigFlake = `{ outputs = { self }: {
  packages.x86_64-linux.big = builtins.derivation {
    name = "big"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "head -c 4000000 /dev/urandom > $out" ];
  };
}; }`

var resumeRe = regexp.MustCompile(`msg="resuming NAR upload" component=hub .*store_path=(\S+) offset=(\d+) file_size=(\d+)`)

// TestNARUploadResumesAfterCut puts a proxy between a `gradient worker`
// and the node that cuts the worker's connection once, in the middle of
// the upload of a 4 MB output. The worker reconnects, builds the job
// again from its store and resumes the upload at the offset the node
// kept. Then the node serves the output, and nix copies it with the
// node's key.
func TestNARUploadResumesAfterCut(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	const cutAfter = 3 << 20
	proxy := startCutProxy(t, n.addr, cutAfter)
	token := strings.TrimSpace(n.mustCLI("worker", "register", "w1"))
	w := startWorker(t, n, "w1", token, "--server", proxy.url())
	waitWorkers(t, n, "w1")

	n.mustCLI("project", "create", "demo/big", "--flake", writeFlake(t, bigFlake))
	n.mustCLI("project", "evaluate", "demo/big")
	select {
	case <-proxy.cutDone:
	case <-time.After(3 * time.Minute):
		t.Fatal("the worker did not send 3 MiB within 3 minutes")
	}
	show := waitEvaluation(t, n, "demo/big", isFinal)
	if show.Evaluation.Status != "succeeded" || len(show.Builds) != 1 || show.Builds[0].Status != "succeeded" {
		t.Fatalf("evaluation = %+v, builds %+v; want one succeeded build", show.Evaluation, show.Builds)
	}
	out := show.Builds[0].Outputs["out"]

	m := resumeRe.FindStringSubmatch(n.logText())
	if m == nil {
		t.Fatalf("node log does not show a resumed NAR upload")
	}
	offset, _ := strconv.ParseInt(m[2], 10, 64)
	fileSize, _ := strconv.ParseInt(m[3], 10, 64)
	if m[1] != out || offset <= 0 || offset >= fileSize {
		t.Errorf("node resumed %s at %d of %d, want %s inside the file", m[1], offset, fileSize, out)
	}
	if !strings.Contains(w.logText(), `msg="resuming NAR upload"`) {
		t.Errorf("worker log does not show the resumed upload")
	}
	// After the cut the worker sends the rest of the file, plus frames
	// and small messages, but not the part the node kept.
	after := proxy.bytesAfterCut()
	t.Logf("the node kept %d of %d bytes; the worker sent %d bytes after the cut", offset, fileSize, after)
	if limit := fileSize - offset + 256<<10; after > limit || after >= fileSize/2 {
		t.Errorf("worker sent %d bytes after the cut; want at most %d of the %d-byte file, from offset %d",
			after, limit, fileSize, offset)
	}

	checkServed(t, n, out)
	var c web.Cache
	decodeJSON(t, n.mustCLI("cache", "show", "main", "--json"), &c)
	other := storeDir(t, "other-store")
	if _, err := tryNix(append(nixArgs(other), "--option", "trusted-public-keys", c.PublicKey,
		"copy", "--from", n.cacheURL(), out)...); err != nil {
		t.Fatalf("nix copy --from the cache: %v", err)
	}
	st, err := os.Stat(filepath.Join(other, out))
	if err != nil {
		t.Fatalf("copied output: %v", err)
	}
	if st.Size() != 4000000 {
		t.Errorf("copied output has %d bytes, want 4000000", st.Size())
	}
}

// slowBuildFlake has one build that logs a line when its builder starts
// and then takes 12 seconds, time enough to connect a second worker.
const slowBuildFlake = `{ outputs = { self }: {
  packages.x86_64-linux.slow = builtins.derivation {
    name = "slow"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo builder running; sleep 12; echo builder finished; echo done > $out" ];
  };
}; }`

// waitBuilderRunning waits until the one build of project has started
// its builder, which logs "builder running", and returns the build's ID.
func waitBuilderRunning(t *testing.T, n *node, project string) uint64 {
	t.Helper()
	var id uint64
	show := waitEvaluation(t, n, project, func(show evalShow) bool {
		for _, b := range show.Builds {
			if b.Status == "building" {
				id = b.ID
				return true
			}
		}
		return false
	})
	if id == 0 {
		t.Fatalf("the build never ran: evaluation %q, builds %+v", show.Evaluation.Status, show.Builds)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(n.mustCLI("build", "log", itoa(id)), "builder running") {
		if time.Now().After(deadline) {
			t.Fatalf("the builder did not start within 60s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	return id
}

// TestBuildSurvivesDroppedConnection cuts a worker's connection while its
// builder runs, with a second worker idle. The node keeps the job for the
// worker's lease. The worker lets nix finish the build, reconnects, and
// completes the job's next offer from its store, so the builder runs once
// and the idle worker builds nothing.
func TestBuildSurvivesDroppedConnection(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	proxy := startCutProxy(t, n.addr, 0)
	token := strings.TrimSpace(n.mustCLI("worker", "register", "w1"))
	w := startWorker(t, n, "w1", token, "--server", proxy.url())
	waitWorkers(t, n, "w1")

	n.mustCLI("project", "create", "demo/drop", "--flake", writeFlake(t, slowBuildFlake))
	n.mustCLI("project", "evaluate", "demo/drop")
	id := waitBuilderRunning(t, n, "demo/drop")
	idleToken := strings.TrimSpace(n.mustCLI("worker", "register", "w2"))
	startWorker(t, n, "w2", idleToken)
	waitWorkers(t, n, "w1", "w2")
	proxy.cutNow()

	show := waitEvaluation(t, n, "demo/drop", isFinal)
	if show.Evaluation.Status != "succeeded" || len(show.Builds) != 1 || show.Builds[0].Status != "succeeded" {
		t.Fatalf("evaluation = %+v, builds %+v; want one succeeded build", show.Evaluation, show.Builds)
	}
	checkServed(t, n, show.Builds[0].Outputs["out"])
	if got := show.Builds[0].WorkerID; got != "w1" {
		t.Errorf("the build is recorded on %q, want w1, whose connection was cut", got)
	}

	log := n.mustCLI("build", "log", itoa(id))
	if c := strings.Count(log, "builder running"); c != 1 {
		t.Errorf("the builder ran %d times, want once; build log:\n%s", c, log)
	}
	// What the builder printed while the connection was down reaches the
	// log with the next attempt.
	if c := strings.Count(log, "builder finished"); c != 1 {
		t.Errorf("the build log has the builder's last line %d times, want once; build log:\n%s", c, log)
	}
	if c := strings.Count(log, "gradient: build attempt started"); c < 2 {
		t.Errorf("build log shows %d attempts, want the cut one and the next; build log:\n%s", c, log)
	}
	if !strings.Contains(w.logText(), `msg="build ended after the connection to the node ended"`) {
		t.Errorf("worker log does not show the build that went on after the cut")
	}
	if !strings.Contains(w.logText(), "reconnecting") {
		t.Errorf("worker log does not show a reconnect after the cut")
	}
}

// TestNodeStopKeepsBuild stops the node with SIGINT while a worker's
// builder runs, and starts it again. The node does not abort the build
// when it stops: the worker lets nix finish it, and completes the job
// the restarted node offers again, so the builder runs once.
func TestNodeStopKeepsBuild(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	n := startNode(t, dataDir, storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	registerWorkers(t, n, "w1")
	n.mustCLI("project", "create", "demo/stop", "--flake", writeFlake(t, slowBuildFlake))
	n.mustCLI("project", "evaluate", "demo/stop")
	id := waitBuilderRunning(t, n, "demo/stop")
	n.stop()

	n2 := startNode(t, dataDir, storeDir(t, "unused-store-2"), "--no-worker", "--listen", n.addr)
	show := waitEvaluation(t, n2, "demo/stop", isFinal)
	if show.Evaluation.Status != "succeeded" || len(show.Builds) != 1 || show.Builds[0].Status != "succeeded" {
		t.Fatalf("evaluation = %+v, builds %+v; want one succeeded build", show.Evaluation, show.Builds)
	}
	log := n2.mustCLI("build", "log", itoa(id))
	if c := strings.Count(log, "builder running"); c != 1 {
		t.Errorf("the builder ran %d times, want once; build log:\n%s", c, log)
	}
	if c := strings.Count(log, "builder finished"); c != 1 {
		t.Errorf("the build log has the builder's last line %d times, want once; build log:\n%s", c, log)
	}
}
