package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/web"
)

// The veth pair's /30. Its addresses exist only inside the test's two
// namespaces, which have their own routing tables, so they cannot clash
// with the machine's networks or with another run of the test.
const (
	netnsAddrA = "10.231.0.1"
	netnsAddrB = "10.231.0.2"
)

// newNetNSPair creates two network namespaces joined by a veth pair, with
// netnsAddrA in the first and netnsAddrB in the second, and deletes them
// when the test ends. It skips the test when the machine does not allow
// creating a namespace (not root, no permission, or no iproute2).
func newNetNSPair(t *testing.T) (nsA, nsB string) {
	t.Helper()
	prefix := fmt.Sprintf("gradient-e2e-%d", os.Getpid())
	nsA, nsB = prefix+"-a", prefix+"-b"

	if out, err := exec.Command("ip", "netns", "add", nsA).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace (needs root and iproute2): ip netns add: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() { deleteNetNS(t, nsA) })
	runIP(t, "netns", "add", nsB)
	t.Cleanup(func() { deleteNetNS(t, nsB) })

	// Both ends are created inside the namespaces, so the root namespace
	// never contains them and the names cannot clash with its interfaces.
	runIP(t, "link", "add", "veth-a", "netns", nsA, "type", "veth", "peer", "name", "veth-b", "netns", nsB)
	for _, end := range []struct{ ns, dev, addr string }{
		{nsA, "veth-a", netnsAddrA},
		{nsB, "veth-b", netnsAddrB},
	} {
		runIP(t, "-n", end.ns, "link", "set", "lo", "up")
		runIP(t, "-n", end.ns, "addr", "add", end.addr+"/30", "dev", end.dev)
		runIP(t, "-n", end.ns, "link", "set", end.dev, "up")
	}
	return nsA, nsB
}

func runIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

func deleteNetNS(t *testing.T, ns string) {
	if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
		t.Errorf("ip netns del %s: %v: %s", ns, err, bytes.TrimSpace(out))
	}
}

// nsNode is a `gradient serve` process in a network namespace. Its HTTP
// address is on that namespace's loopback, so its client commands run in
// the namespace too, and the test reaches its HTTP server through
// sockets opened there.
type nsNode struct {
	*node
	ns string
}

// startNetNSNode runs `gradient serve` in the namespace ns, with the
// flags of startNode, and waits until it logs that it has started.
func startNetNSNode(t *testing.T, ns, dataDir, workerStore string, extra ...string) *nsNode {
	t.Helper()
	n := &nsNode{node: &node{t: t, dataDir: dataDir, store: workerStore}, ns: ns}
	args := append([]string{"netns", "exec", ns, gradientBin,
		"serve", "--listen", "127.0.0.1:0", "--data-dir", dataDir,
		"--worker-store", workerStore, "--cache-key-name", "e2e-1", "--log-level", "debug",
		"--no-default-upstream"}, extra...)
	// ip netns exec replaces itself with gradient, so the signals of
	// node.stop and node.kill reach gradient.
	n.cmd = exec.Command("ip", args...)
	n.start("node in "+ns, 20*time.Second)
	return n
}

// cli runs a gradient client command in the node's namespace and returns
// its stdout, stderr and exit code.
func (n *nsNode) cli(args ...string) (stdout, stderr string, code int) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.ns, gradientBin,
		"--server", n.url(), "--data-dir", n.dataDir}, args...)...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			n.t.Fatalf("gradient %s in %s: %v", strings.Join(args, " "), n.ns, err)
		}
		return o.String(), e.String(), ee.ExitCode()
	}
	return o.String(), e.String(), 0
}

// mustCLI runs a client command in the node's namespace that must succeed.
func (n *nsNode) mustCLI(args ...string) string {
	n.t.Helper()
	out, errOut, code := n.cli(args...)
	if code != 0 {
		n.t.Fatalf("gradient %s in %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), n.ns, code, out, errOut)
	}
	return out
}

// peers returns the output of `gradient mesh peers --json`.
func (n *nsNode) peers() []mesh.PeerInfo {
	n.t.Helper()
	var peers []mesh.PeerInfo
	decodeJSON(n.t, n.mustCLI("mesh", "peers", "--json"), &peers)
	return peers
}

// metricValue returns the sum of the series of name whose labels include
// every label in labels, from the node's /metrics.
func (n *nsNode) metricValue(name string, labels ...string) float64 {
	n.t.Helper()
	client := &http.Client{
		Transport: &http.Transport{DialContext: dialInNetNS(n.ns)},
		Timeout:   10 * time.Second,
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get(n.url() + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatal(err)
	}

	var sum float64
	for line := range strings.Lines(string(body)) {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		if !allContained(line, labels) {
			continue
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); err == nil {
			sum += v
		}
	}
	return sum
}

func allContained(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// dialInNetNS returns a dial function that opens its sockets in the
// network namespace ns. A socket stays in the namespace it was created
// in, so only the dial runs there. It runs on a goroutine locked to its OS
// thread, which enters ns. The thread stays locked, so Go ends it with the
// goroutine and never schedules another goroutine in ns.
func dialInNetNS(ns string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		type result struct {
			conn net.Conn
			err  error
		}
		done := make(chan result, 1)
		go func() {
			runtime.LockOSThread()
			f, err := os.Open(filepath.Join("/var/run/netns", ns))
			if err != nil {
				done <- result{err: fmt.Errorf("open network namespace %q: %w", ns, err)}
				return
			}
			defer f.Close()
			if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
				done <- result{err: fmt.Errorf("enter network namespace %q: %w", ns, err)}
				return
			}
			var d net.Dialer
			conn, err := d.DialContext(ctx, network, addr)
			done <- result{conn: conn, err: err}
		}()
		r := <-done
		return r.conn, r.err
	}
}

// TestMeshNetNSSubstitutesAcrossVeth runs two federated nodes in separate
// network namespaces joined only by a veth pair. A builds the example
// flake, and a nix client in B's namespace substitutes hello through B's
// HTTP cache, which fetches it from A over the mesh across the veth.
// Neither node has an upstream cache, so the path can only come from A.
func TestMeshNetNSSubstitutesAcrossVeth(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the example flake builds for x86_64-linux")
	}
	nsA, nsB := newNetNSPair(t)

	memberA, memberB := newMeshMember(t, "a"), newMeshMember(t, "b")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-b": memberB})

	// A listens on its veth address only, so B can reach it by no other way.
	a := startNetNSNode(t, nsA, memberA.dataDir, storeDir(t, "store-a"), "--mesh-listen", "/ip4/"+netnsAddrA+"/tcp/0")
	var stA mesh.Status
	decodeJSON(t, a.mustCLI("mesh", "status", "--json"), &stA)
	if stA.PeerID != memberA.peerID.String() {
		t.Errorf("A's mesh status peer ID = %s, want %s from keys/mesh.key", stA.PeerID, memberA.peerID)
	}
	if len(stA.Addrs) != 1 || !strings.HasPrefix(stA.Addrs[0], "/ip4/"+netnsAddrA+"/tcp/") {
		t.Fatalf("A's mesh addresses = %q, want one on %s", stA.Addrs, netnsAddrA)
	}

	helloOut := buildHello(t, a)

	// B joins through A's veth address.
	b := startNetNSNode(t, nsB, memberB.dataDir, storeDir(t, "store-b"), "--no-worker",
		"--mesh-listen", "/ip4/"+netnsAddrB+"/tcp/0", "--mesh-bootstrap", stA.Addrs[0])
	waitUntil(t, 10*time.Second, "B to connect to A", func() bool {
		peers := b.peers()
		return len(peers) == 1 && peers[0].PeerID == stA.PeerID && peers[0].Org == "org-a"
	})
	if addrs := b.peers()[0].Addrs; !slices.ContainsFunc(addrs, func(s string) bool { return strings.HasPrefix(s, "/ip4/"+netnsAddrA+"/") }) {
		t.Errorf("B's addresses of A = %q, want one on A's veth address %s", addrs, netnsAddrA)
	}
	waitUntil(t, 10*time.Second, "A to see B's connection", func() bool {
		peers := a.peers()
		return len(peers) == 1 && peers[0].PeerID == memberB.peerID.String()
	})
	if addrs := a.peers()[0].Addrs; !slices.ContainsFunc(addrs, func(s string) bool { return strings.HasPrefix(s, "/ip4/"+netnsAddrB+"/") }) {
		t.Errorf("A's addresses of B = %q, want one on B's veth address %s", addrs, netnsAddrB)
	}
	waitUntil(t, 15*time.Second, "A's provider record of hello to reach B", func() bool {
		var found web.MeshFindResult
		decodeJSON(t, b.mustCLI("mesh", "find", helloOut, "--json"), &found)
		return len(found.Providers) == 1 && found.Providers[0].PeerID.String() == stA.PeerID
	})

	// A nix client in B's namespace substitutes hello from B, which holds
	// nothing yet.
	client := storeDir(t, "client-store")
	args := append([]string{"netns", "exec", nsB, "nix"}, nixArgs(client)...)
	args = append(args,
		"--option", "trusted-public-keys", memberB.publicKey,
		"--option", "require-sigs", "true",
		"copy", "--from", b.cacheURL(), helloOut)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("nix copy in %s: %v\n%s", nsB, err, out)
	}

	got, err := os.ReadFile(filepath.Join(client, helloOut))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(a.store, helloOut))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("substituted hello = %q, want A's %q", got, want)
	}

	// The path came from A over the mesh.
	if v := b.metricValue("gradient_cache_requests_total", `kind="narinfo"`, `result="peer"`); v < 1 {
		t.Errorf("B's narinfo requests served from a peer = %v, want at least 1", v)
	}
	if v := b.metricValue("gradient_mesh_fetches_total", `result="fetched"`); v < 1 {
		t.Errorf("B's mesh fetches = %v, want at least 1", v)
	}
	if !strings.Contains(b.logText(), "remote_peer_id="+stA.PeerID) {
		t.Errorf("B's log does not name A (%s) as the peer it fetched from", stA.PeerID)
	}
}

// TestMeshNetNSFindsPeerByMDNS starts two members on one link with mDNS on
// and no bootstrap address: they must find each other by mDNS alone.
func TestMeshNetNSFindsPeerByMDNS(t *testing.T) {
	requireNix(t)
	nsA, nsB := newNetNSPair(t)

	memberA, memberB := newMeshMember(t, "a"), newMeshMember(t, "b")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-b": memberB})

	a := startNetNSNode(t, nsA, memberA.dataDir, storeDir(t, "store-a"), "--no-worker",
		"--mesh-listen", "/ip4/"+netnsAddrA+"/tcp/0", "--mesh-mdns")
	b := startNetNSNode(t, nsB, memberB.dataDir, storeDir(t, "store-b"), "--no-worker",
		"--mesh-listen", "/ip4/"+netnsAddrB+"/tcp/0", "--mesh-mdns")

	waitUntil(t, 20*time.Second, "B to find A by mDNS", func() bool {
		peers := b.peers()
		return len(peers) == 1 && peers[0].PeerID == memberA.peerID.String() && peers[0].Org == "org-a"
	})
	waitUntil(t, 20*time.Second, "A to see B", func() bool {
		peers := a.peers()
		return len(peers) == 1 && peers[0].PeerID == memberB.peerID.String()
	})
}
