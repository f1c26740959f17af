package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// gradientBin is the gradient binary that TestMain builds once.
var gradientBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "gradient-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gradientBin = filepath.Join(dir, "gradient")
	build := exec.Command("go", "build", "-race", "-o", gradientBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build gradient:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireNix skips the test when nix is missing, unless
// GRADIENT_REQUIRE_NIX=1 makes that a failure.
func requireNix(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("nix"); err != nil {
		if os.Getenv("GRADIENT_REQUIRE_NIX") == "1" {
			t.Fatal("nix is not on PATH and GRADIENT_REQUIRE_NIX=1: run .ci/install-deps")
		}
		t.Skip("nix is not on PATH")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		t.Fatal("/bin/busybox is missing: run .ci/install-deps")
	}
}

// storeDir returns a fresh directory for a chroot store and makes sure the
// test's cleanup can remove it, which nix leaves read-only.
func storeDir(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	t.Cleanup(func() { exec.Command("chmod", "-R", "u+w", dir).Run() })
	return dir
}

// nixArgs are the options every nix client call of the tests passes, so
// that nothing depends on the machine's nix.conf. Nix remembers narinfos
// per cache URL and per user, a missing one for an hour and a found one
// for a month by default. A lookup made before a path was built would
// hide it otherwise, and a node on a port that an earlier test's node
// used, with another key, would get that node's narinfos.
func nixArgs(store string) []string {
	return []string{
		"--extra-experimental-features", "nix-command flakes",
		"--store", store,
		"--option", "substituters", "",
		"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--option", "build-users-group", "",
		"--option", "narinfo-cache-negative-ttl", "0",
		"--option", "narinfo-cache-positive-ttl", "0",
	}
}

// runNix runs nix with args and returns its stdout, failing the test on a
// non-zero exit.
func runNix(t *testing.T, args ...string) string {
	t.Helper()
	out, err := tryNix(args...)
	if err != nil {
		t.Fatalf("nix %s: %v", strings.Join(args, " "), err)
	}
	return out
}

func tryNix(args ...string) (string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("nix", args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("%w: %s", err, stderr.String())
	}
	return stdout.String(), nil
}

// node is a `gradient serve` process.
type node struct {
	t       *testing.T
	dataDir string
	store   string
	addr    string
	cmd     *exec.Cmd

	mu  sync.Mutex
	log bytes.Buffer
}

var startedRe = regexp.MustCompile(`msg="node started" listen=(\S+)`)

// startNode runs `gradient serve` on a free loopback port and waits until
// it logs that it has started.
func startNode(t *testing.T, dataDir, workerStore string, extra ...string) *node {
	t.Helper()
	n := &node{t: t, dataDir: dataDir, store: workerStore}
	args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
		"--worker-store", workerStore, "--cache-key-name", "e2e-1", "--log-level", "debug",
		// cache.nixos.org is out of reach here, and tests send no traffic
		// off this machine.
		"--no-default-upstream"}, extra...)
	n.cmd = exec.Command(gradientBin, args...)
	n.start("node", 60*time.Second)
	return n
}

// start runs n.cmd, keeps its stderr as the node's log, and waits until
// the node logs its address or exits. The test's cleanup stops the node
// and prints its log, named by label, when the test failed.
func (n *node) start(label string, timeout time.Duration) {
	n.t.Helper()
	stderr, err := n.cmd.StderrPipe()
	if err != nil {
		n.t.Fatal(err)
	}
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}

	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line := sc.Text()
			n.mu.Lock()
			n.log.WriteString(line + "\n")
			n.mu.Unlock()
			if m := startedRe.FindStringSubmatch(line); m != nil {
				addrc <- m[1]
			}
		}
		close(addrc)
	}()
	n.t.Cleanup(func() {
		n.stop()
		if n.t.Failed() {
			n.t.Logf("%s log:\n%s", label, n.logText())
		}
	})

	select {
	case addr, ok := <-addrc:
		if !ok {
			n.cmd.Wait()
			n.t.Fatalf("%s exited before it started; log:\n%s", label, n.logText())
		}
		n.addr = addr
	case <-time.After(timeout):
		n.t.Fatalf("%s did not start within %s; log:\n%s", label, timeout, n.logText())
	}
}

func (n *node) logText() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.log.String()
}

func (n *node) url() string { return "http://" + n.addr }

func (n *node) cacheURL() string { return n.url() + "/cache/main" }

// stop ends the node with SIGTERM and waits for it.
func (n *node) stop() {
	if n.cmd.ProcessState != nil {
		return
	}
	n.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		n.cmd.Process.Kill()
		<-done
	}
}

// kill ends the node with SIGKILL, as a crash would.
func (n *node) kill() {
	n.cmd.Process.Kill()
	n.cmd.Wait()
}

// cli runs a gradient client command against the node and returns its
// stdout, stderr and exit code.
func (n *node) cli(args ...string) (stdout, stderr string, code int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, gradientBin, append([]string{"--server", n.url(), "--data-dir", n.dataDir}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	code = 0
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			n.t.Fatalf("gradient %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return o.String(), e.String(), code
}

// mustCLI runs a client command that must succeed.
func (n *node) mustCLI(args ...string) string {
	n.t.Helper()
	out, errOut, code := n.cli(args...)
	if code != 0 {
		n.t.Fatalf("gradient %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(s), v); err != nil {
		t.Fatalf("decode %q: %v", s, err)
	}
}

func readAll(t *testing.T, r io.Reader) string {
	t.Helper()
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
