package main

import (
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// gateProxy forwards TCP connections to a target. While its gate is
// closed, new connections wait before they reach the target, so a test
// can choose when a worker behind it reconnects.
type gateProxy struct {
	ln     net.Listener
	target string

	// mu guards gate.
	mu sync.Mutex
	// gate is closed while new connections may pass.
	gate chan struct{}
}

// startGateProxy listens on loopback with an open gate. The test's
// cleanup closes the listener and every connection.
func startGateProxy(t *testing.T, target string) *gateProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &gateProxy{ln: ln, target: target, gate: make(chan struct{})}
	close(p.gate)

	var wg sync.WaitGroup
	var conns sync.Map
	done := make(chan struct{})
	t.Cleanup(func() {
		close(done)
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
				p.forward(c, &conns, done)
			}()
		}
	}()
	return p
}

func (p *gateProxy) url() string { return "http://" + p.ln.Addr().String() }

// closeGate makes new connections wait until openGate.
func (p *gateProxy) closeGate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.gate = make(chan struct{})
}

// openGate lets waiting and new connections through.
func (p *gateProxy) openGate() {
	p.mu.Lock()
	defer p.mu.Unlock()
	close(p.gate)
}

// forward waits for the gate, then copies c to the target and back until
// either side closes or done is closed.
func (p *gateProxy) forward(c net.Conn, conns *sync.Map, done <-chan struct{}) {
	defer c.Close()
	p.mu.Lock()
	gate := p.gate
	p.mu.Unlock()
	select {
	case <-gate:
	case <-done:
		return
	}

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
	io.Copy(up, c)
}

// restartBuildFlake builds one derivation whose builder runs for 8 s,
// long enough to kill and restart the node while it runs.
const restartBuildFlake = `{ outputs = { self }: {
  packages.x86_64-linux.slow = builtins.derivation {
    name = "slow-restart"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "echo builder running; sleep 8; echo builder finished; echo done > $out" ];
  };
}; }`

// TestNodeKillKeepsBuildOnItsWorker kills the node with SIGKILL while
// worker w1 runs a builder, with worker w2 idle, and starts the node
// again on the same data directory and port. w2 reconnects first, while
// w1 waits behind a proxy. The restarted node holds the build for w1
// instead of giving it to w2. When w1 reconnects and reports the build,
// which went on, the node offers it to w1 again, so the builder runs
// once.
func TestNodeKillKeepsBuildOnItsWorker(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	n := startNode(t, dataDir, storeDir(t, "unused-store"), "--no-worker")
	noUpstream(t, n)
	proxy := startGateProxy(t, n.addr)
	token := strings.TrimSpace(n.mustCLI("worker", "register", "w1"))
	idleToken := strings.TrimSpace(n.mustCLI("worker", "register", "w2"))
	w1 := startWorker(t, n, "w1", token, "--server", proxy.url())
	waitWorkers(t, n, "w1")

	n.mustCLI("project", "create", "demo/restart", "--flake", writeFlake(t, restartBuildFlake))
	n.mustCLI("project", "evaluate", "demo/restart")
	id := waitBuilderRunning(t, n, "demo/restart")

	// w2 starts while the node is down, so that it connects to the
	// restarted node first, while w1 waits at the proxy.
	proxy.closeGate()
	n.kill()
	w2 := startWorker(t, n, "w2", idleToken)
	n2 := startNode(t, dataDir, storeDir(t, "unused-store-2"), "--no-worker", "--listen", n.addr)
	// The node queries a joining worker's store after it handed the
	// worker its first jobs, so by this line w2 would have the build if
	// the node gave it away.
	waitUntil(t, 60*time.Second, "w2's store report", func() bool {
		for _, line := range strings.Split(n2.logText(), "\n") {
			if strings.Contains(line, `msg="worker store reported"`) && strings.Contains(line, "worker_id=w2") {
				return true
			}
		}
		return false
	})
	proxy.openGate()

	show := waitEvaluation(t, n2, "demo/restart", isFinal)
	if show.Evaluation.Status != "succeeded" || len(show.Builds) != 1 || show.Builds[0].Status != "succeeded" {
		t.Fatalf("evaluation = %+v, builds %+v; want one succeeded build", show.Evaluation, show.Builds)
	}
	if got := show.Builds[0].WorkerID; got != "w1" {
		t.Errorf("the build is recorded on %q, want w1, which was building it when the node was killed", got)
	}
	log := n2.mustCLI("build", "log", itoa(id))
	if c := strings.Count(log, "builder running"); c != 1 {
		t.Errorf("the builder ran %d times, want once; build log:\n%s", c, log)
	}
	if c := strings.Count(log, "builder finished"); c != 1 {
		t.Errorf("the build log has the builder's last line %d times, want once; build log:\n%s", c, log)
	}
	if !strings.Contains(n2.logText(), `msg="build held for the worker that was building it before the restart"`) {
		t.Errorf("node log does not show the build held for w1")
	}
	if strings.Contains(w2.logText(), `msg="build started"`) {
		t.Errorf("w2 started a build; its log:\n%s", w2.logText())
	}
	// The first job, then the job the restarted node offered again.
	if c := strings.Count(w1.logText(), `msg="build started"`); c != 2 {
		t.Errorf("w1 started %d build jobs, want 2", c)
	}
}
