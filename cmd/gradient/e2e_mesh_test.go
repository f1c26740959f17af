package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/libp2p/go-libp2p/core/crypto"
	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/mesh/federation"
	"github.com/gradient-ci/gradient/web"
)

// meshMember is the identity of one node of a test federation, created
// before the node starts.
type meshMember struct {
	dataDir   string
	peerID    peer.ID
	publicKey string
}

// newMeshMember writes a libp2p key and a cache signing key named
// <name>-1 into a fresh data directory, where the node finds them.
func newMeshMember(t *testing.T, name string) meshMember {
	t.Helper()
	dataDir := filepath.Join(t.TempDir(), name)

	key, err := mesh.LoadOrCreateKey(filepath.Join(dataDir, "keys", "mesh.key"))
	if err != nil {
		t.Fatal(err)
	}
	id, err := peer.IDFromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}

	secret, public, err := cache.GenerateKey(name + "-1")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "keys", "main.secret"), []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	return meshMember{dataDir: dataDir, peerID: id, publicKey: public}
}

// writeFederation writes a federation of members, one organisation
// each, to the default federation file of every member.
func writeFederation(t *testing.T, members map[string]meshMember) {
	t.Helper()
	var list []federation.Member
	for org, m := range members {
		key, err := narinfo.ParsePublicKey(m.publicKey)
		if err != nil {
			t.Fatal(err)
		}
		list = append(list, federation.Member{Org: org, PeerIDs: []peer.ID{m.peerID}, Keys: []narinfo.PublicKey{key}})
	}
	fed, err := federation.New(time.Hour, list)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(fed)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		if err := os.WriteFile(filepath.Join(m.dataDir, "mesh-federation.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// meshStatus returns the output of `gradient mesh status --json`.
func (n *node) meshStatus() mesh.Status {
	n.t.Helper()
	var st mesh.Status
	decodeJSON(n.t, n.mustCLI("mesh", "status", "--json"), &st)
	return st
}

// waitUntil polls cond every 100ms until it holds or timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-time.After(100 * time.Millisecond)
	}
}

// metricValue returns the sum of the series of name whose labels include
// every label in labels, from the node's /metrics.
func (n *node) metricValue(name string, labels ...string) float64 {
	n.t.Helper()
	resp, err := http.Get(n.url() + "/metrics")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		n.t.Fatal(err)
	}

	var sum float64
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		matches := true
		for _, l := range labels {
			matches = matches && strings.Contains(line, l)
		}
		if !matches {
			continue
		}
		var v float64
		fields := strings.Fields(line)
		if err := json.Unmarshal([]byte(fields[len(fields)-1]), &v); err == nil {
			sum += v
		}
	}
	return sum
}

// TestMeshSubstitutesFromPeer runs two federated nodes: A builds the
// example flake, and a nix client of C substitutes A's output through
// C's HTTP cache, which fetches it from A over the mesh. Neither node has
// an upstream cache, so the path can only come from A.
func TestMeshSubstitutesFromPeer(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the example flake builds for x86_64-linux")
	}

	memberA, memberC := newMeshMember(t, "a"), newMeshMember(t, "c")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-c": memberC})

	// A builds the flake before C exists.
	a := startNode(t, memberA.dataDir, storeDir(t, "store-a"), "--mesh-listen", "/ip4/127.0.0.1/tcp/0")
	stA := a.meshStatus()
	if stA.PeerID != memberA.peerID.String() {
		t.Errorf("A's mesh status peer ID = %s, want %s from keys/mesh.key", stA.PeerID, memberA.peerID)
	}
	if stA.CachePublicKey != memberA.publicKey || len(stA.Addrs) == 0 {
		t.Fatalf("A's mesh status = %+v, want cache key %s and an address", stA, memberA.publicKey)
	}

	helloOut := buildHello(t, a)

	// C joins through A's address.
	c := startNode(t, memberC.dataDir, storeDir(t, "store-c"), "--no-worker",
		"--mesh-listen", "/ip4/127.0.0.1/tcp/0", "--mesh-bootstrap", stA.Addrs[0])

	waitUntil(t, 20*time.Second, "C to connect to A", func() bool {
		var peers []mesh.PeerInfo
		decodeJSON(t, c.mustCLI("mesh", "peers", "--json"), &peers)
		return len(peers) == 1 && peers[0].PeerID == stA.PeerID && peers[0].Org == "org-a"
	})
	waitUntil(t, 30*time.Second, "A's provider record of hello to reach C", func() bool {
		var found web.MeshFindResult
		decodeJSON(t, c.mustCLI("mesh", "find", helloOut, "--json"), &found)
		return len(found.Providers) == 1 && found.Providers[0].PeerID.String() == stA.PeerID
	})

	// A nix client substitutes hello from C, which holds nothing yet.
	client := storeDir(t, "client-store")
	runNix(t, append(nixArgs(client),
		"--option", "trusted-public-keys", memberC.publicKey,
		"--option", "require-sigs", "true",
		"copy", "--from", c.cacheURL(), helloOut)...)

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
	if v := c.metricValue("gradient_cache_requests_total", `kind="narinfo"`, `result="peer"`); v < 1 {
		t.Errorf("C's narinfo requests served from a peer = %v, want at least 1", v)
	}
	if v := c.metricValue("gradient_mesh_fetches_total", `result="fetched"`); v < 1 {
		t.Errorf("C's mesh fetches = %v, want at least 1", v)
	}
	if !strings.Contains(c.logText(), "remote_peer_id="+stA.PeerID) {
		t.Errorf("C's log does not name A (%s) as the peer it fetched from", stA.PeerID)
	}

	// C announces what it fetched, so B could fetch it from C as well.
	waitUntil(t, 30*time.Second, "C to provide hello too", func() bool {
		var found web.MeshFindResult
		decodeJSON(t, a.mustCLI("mesh", "find", helloOut, "--json"), &found)
		return len(found.Providers) == 1 && found.Providers[0].PeerID.String() == memberC.peerID.String()
	})

	// gradient mesh trust adds a member and saves the federation file.
	newKey, _, err := crypto.GenerateEd25519Key(nil)
	if err != nil {
		t.Fatal(err)
	}
	newID, _ := peer.IDFromPrivateKey(newKey)
	_, newPublic, err := cache.GenerateKey("new-1")
	if err != nil {
		t.Fatal(err)
	}
	out := c.mustCLI("mesh", "trust", newID.String(), "--key", newPublic)
	if !strings.Contains(out, "new-1") {
		t.Errorf("mesh trust output %q does not name the organisation new-1", out)
	}
	saved, err := os.Open(filepath.Join(memberC.dataDir, "mesh-federation.json"))
	if err != nil {
		t.Fatal(err)
	}
	defer saved.Close()
	fed, err := federation.Parse(saved)
	if err != nil {
		t.Fatalf("saved federation file: %v", err)
	}
	if org, ok := fed.OrgOf(newID); !ok || org != "new-1" {
		t.Errorf("saved federation puts %s in %q, %v, want new-1", newID, org, ok)
	}
	if _, ok := fed.OrgOf(memberA.peerID); !ok {
		t.Error("saved federation lost A")
	}
	if _, errOut, code := c.cli("mesh", "trust", "not-a-peer-id", "--key", newPublic); code == 0 || !strings.Contains(errOut, "peer_id") {
		t.Errorf("mesh trust with an invalid peer ID: exit %d, stderr %q, want an error naming peer_id", code, errOut)
	}
}

// meshSlowFlake builds one derivation that sleeps, long enough for a second
// node to evaluate the flake while the first one builds it.
const meshSlowFlake = `{ outputs = { self }: {
  packages.x86_64-linux.slow = builtins.derivation {
    name = "slow"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "sleep 8; echo slow > $out" ];
  };
}; }`

// meshFailingFlake builds one derivation that sleeps and then fails.
const meshFailingFlake = `{ outputs = { self }: {
  packages.x86_64-linux.slow = builtins.derivation {
    name = "slow"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "sleep 5; echo failing on purpose; exit 1" ];
  };
}; }`

// startBuildingOnPeer starts federated nodes A and B, each with its own
// worker store, creates project demo/slow from flakeSrc on both, and
// evaluates it on A. It returns once A builds the derivation slow and B
// has A's announcement of that build, with A's mesh status and the .drv
// path. Both nodes get the serve flags extra.
func startBuildingOnPeer(t *testing.T, flakeSrc string, extra ...string) (a, b *node, stA mesh.Status, drvPath string) {
	t.Helper()
	memberA, memberB := newMeshMember(t, "a"), newMeshMember(t, "b")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-b": memberB})

	a = startNode(t, memberA.dataDir, storeDir(t, "store-a"), append([]string{"--mesh-listen", "/ip4/127.0.0.1/tcp/0"}, extra...)...)
	stA = a.meshStatus()
	if len(stA.Addrs) == 0 {
		t.Fatalf("A's mesh status = %+v, want an address", stA)
	}
	b = startNode(t, memberB.dataDir, storeDir(t, "store-b"),
		append([]string{"--mesh-listen", "/ip4/127.0.0.1/tcp/0", "--mesh-bootstrap", stA.Addrs[0]}, extra...)...)
	waitUntil(t, 20*time.Second, "B to connect to A", func() bool {
		var peers []mesh.PeerInfo
		decodeJSON(t, b.mustCLI("mesh", "peers", "--json"), &peers)
		return len(peers) == 1 && peers[0].PeerID == stA.PeerID
	})

	flake := writeFlake(t, flakeSrc)
	for _, n := range []*node{a, b} {
		n.mustCLI("project", "create", "demo/slow", "--flake", flake, "--entry-points", "packages.*.*")
	}

	// A starts the build, and B learns of it from A's announcement.
	a.mustCLI("project", "evaluate", "demo/slow")
	var showA projectShow
	waitUntil(t, 30*time.Second, "A to start building slow", func() bool {
		decodeJSON(t, a.mustCLI("project", "show", "demo/slow", "--json"), &showA)
		return strings.Contains(a.logText(), `msg="job assigned"`) && len(showA.Builds) == 1
	})
	drvPath = showA.Builds[0].DrvPath
	waitUntil(t, 10*time.Second, "B to see A's build of slow", func() bool {
		var found web.MeshFindResult
		decodeJSON(t, b.mustCLI("mesh", "find", drvPath, "--json"), &found)
		return len(found.Building) == 1 && found.Building[0].PeerID == stA.PeerID
	})

	return a, b, stA, drvPath
}

// TestMeshPeerBuildPostponesLocalBuild runs two federated nodes. A starts
// building a slow derivation, and B evaluates the same flake meanwhile: B
// must wait for A's build and fetch its output over the mesh instead of
// building it too.
func TestMeshPeerBuildPostponesLocalBuild(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	a, b, stA, drvPath := startBuildingOnPeer(t, meshSlowFlake)

	// B evaluates while A still builds.
	if _, progress, code := b.cli("project", "evaluate", "demo/slow", "--wait"); code != 0 {
		t.Fatalf("evaluate on B: exit %d\n%s", code, progress)
	}

	var showB projectShow
	decodeJSON(t, b.mustCLI("project", "show", "demo/slow", "--json"), &showB)
	if len(showB.Builds) != 1 {
		t.Fatalf("B's builds = %+v, want one", showB.Builds)
	}
	got := showB.Builds[0]
	if got.DrvPath != drvPath {
		t.Errorf("B's derivation = %s, want A's %s", got.DrvPath, drvPath)
	}
	if got.Status != "cached" {
		t.Errorf("B's build of slow is %q, want cached", got.Status)
	}

	var showA projectShow
	decodeJSON(t, a.mustCLI("project", "show", "demo/slow", "--json"), &showA)
	if showA.Builds[0].Status != "succeeded" {
		t.Errorf("A's build of slow is %q, want succeeded", showA.Builds[0].Status)
	}
	if out := showA.Builds[0].Outputs["out"]; out == "" || got.Outputs["out"] != out {
		t.Errorf("B's output = %q, want A's %q", got.Outputs["out"], out)
	}

	logB := b.logText()
	if !strings.Contains(logB, "reason=postponed-for-peer") {
		t.Error("B's log does not show slow postponed for A's build")
	}
	if strings.Contains(logB, `msg="job assigned"`) {
		t.Error("B assigned a job, want no local build")
	}
	if !strings.Contains(logB, `msg="derivation built by a mesh peer"`) || !strings.Contains(logB, "remote_peer_id="+stA.PeerID) {
		t.Errorf("B's log does not show slow fetched from A (%s)", stA.PeerID)
	}
	if v := b.metricValue("gradient_mesh_fetches_total", `result="fetched"`); v < 1 {
		t.Errorf("B's mesh fetches = %v, want at least 1", v)
	}
}

// TestMeshPeerBuildFailureBuildsLocally runs two federated nodes. B
// evaluates while A builds a derivation that fails: when A announces the
// failure, B must build the derivation itself at once instead of waiting
// for A's estimated time of arrival plus the slack, minutes away.
func TestMeshPeerBuildFailureBuildsLocally(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	_, b, stA, drvPath := startBuildingOnPeer(t, meshFailingFlake)

	// The build fails on B too, but B runs it long before A's ETA plus
	// the slack.
	b.mustCLI("project", "evaluate", "demo/slow")
	var showB projectShow
	waitUntil(t, 40*time.Second, "B's evaluation to end", func() bool {
		decodeJSON(t, b.mustCLI("project", "show", "demo/slow", "--json"), &showB)
		return showB.Evaluation.Status == "failed" || showB.Evaluation.Status == "succeeded" || showB.Evaluation.Status == "aborted"
	})
	if len(showB.Builds) != 1 || showB.Builds[0].DrvPath != drvPath {
		t.Fatalf("B's builds = %+v, want one of %s", showB.Builds, drvPath)
	}
	if got := showB.Builds[0].Status; got != "failed" {
		t.Errorf("B's build of slow is %q, want failed", got)
	}

	logB := b.logText()
	if !strings.Contains(logB, "reason=postponed-for-peer") {
		t.Error("B's log does not show slow postponed for A's build")
	}
	if !strings.Contains(logB, `msg="a peer's build ended without outputs, so the derivation is built here"`) ||
		!strings.Contains(logB, "remote_peer_id="+stA.PeerID) {
		t.Errorf("B's log does not show A's (%s) build ending", stA.PeerID)
	}
	if !strings.Contains(logB, `msg="job assigned"`) {
		t.Error("B assigned no job, want a local build after A's failure")
	}
}

// cliRunner runs gradient client commands against a node: a *node, or
// an *nsNode in a network namespace.
type cliRunner interface {
	cli(args ...string) (stdout, stderr string, code int)
	mustCLI(args ...string) string
}

// buildHello builds docs/examples/hello on node a, which has a worker,
// and returns the output path of hello-1.0.
func buildHello(t *testing.T, a cliRunner) string {
	t.Helper()
	a.mustCLI("project", "create", "demo/hello", "--flake", exampleFlake(t))
	if _, progress, code := a.cli("project", "evaluate", "demo/hello", "--wait"); code != 0 {
		t.Fatalf("evaluate on A: exit %d\n%s", code, progress)
	}
	var show projectShow
	decodeJSON(t, a.mustCLI("project", "show", "demo/hello", "--json"), &show)
	var helloOut string
	for _, b := range show.Builds {
		if b.Name == "hello-1.0" {
			helloOut = b.Outputs["out"]
		}
	}
	if helloOut == "" {
		t.Fatalf("no output of hello-1.0 on A in %+v", show.Builds)
	}
	return helloOut
}
