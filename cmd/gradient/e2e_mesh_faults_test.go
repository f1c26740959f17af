package main

import (
	"bytes"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh"
	"github.com/gradient-ci/gradient/web"
)

// tamperNAR flips the last byte of the NAR file that n's main cache stores
// for storePath, so that n serves a file of the right size with the wrong
// hash. In a zstd file that byte belongs to the frame's content checksum.
func (n *node) tamperNAR(storePath string) {
	n.t.Helper()
	hashPart, _, _ := strings.Cut(filepath.Base(storePath), "-")
	resp, err := http.Get(n.cacheURL() + "/" + hashPart + ".narinfo")
	if err != nil {
		n.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		n.t.Fatalf("narinfo of %s: HTTP %d", storePath, resp.StatusCode)
	}
	info, err := narinfo.Parse(resp.Body)
	if err != nil {
		n.t.Fatal(err)
	}

	file := filepath.Join(n.dataDir, "caches", "main", "nar", strings.TrimPrefix(info.URL, "nar/"))
	data, err := os.ReadFile(file)
	if err != nil {
		n.t.Fatal(err)
	}
	data[len(data)-1] ^= 0xff
	if err := os.WriteFile(file, data, 0o644); err != nil {
		n.t.Fatal(err)
	}
}

// meshProviders returns the peer IDs that `gradient mesh find` on n lists
// as providers of storePath.
func (n *node) meshProviders(storePath string) []string {
	n.t.Helper()
	var found web.MeshFindResult
	decodeJSON(n.t, n.mustCLI("mesh", "find", storePath, "--json"), &found)
	var ids []string
	for _, p := range found.Providers {
		ids = append(ids, p.PeerID.String())
	}
	return ids
}

// TestMeshTamperedNARRejected runs three federated nodes. A builds the
// example flake and B copies hello from A; then one byte of A's stored NAR
// of hello is changed. C starts with a federation file without B, so that A is
// its only candidate: a nix client's substitution of hello through C
// fails, and C blocks A. Once C trusts B, the same substitution succeeds
// with hello from B.
func TestMeshTamperedNARRejected(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the example flake builds for x86_64-linux")
	}

	memberA, memberB, memberC := newMeshMember(t, "a"), newMeshMember(t, "b"), newMeshMember(t, "c")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-b": memberB, "org-c": memberC})
	// Overwrite C's federation file with one of A and C only.
	aInC := memberA
	aInC.dataDir = memberC.dataDir
	writeFederation(t, map[string]meshMember{"org-a": aInC, "org-c": memberC})

	a := startNode(t, memberA.dataDir, storeDir(t, "store-a"), "--mesh-listen", "/ip4/127.0.0.1/tcp/0")
	stA := a.meshStatus()
	if len(stA.Addrs) == 0 {
		t.Fatalf("A's mesh status = %+v, want an address", stA)
	}
	helloOut := buildHello(t, a)
	want, err := os.ReadFile(filepath.Join(a.store, helloOut))
	if err != nil {
		t.Fatal(err)
	}

	// B takes hello from A over the mesh while A's NAR is intact.
	b := startNode(t, memberB.dataDir, storeDir(t, "store-b"), "--no-worker",
		"--mesh-listen", "/ip4/127.0.0.1/tcp/0", "--mesh-bootstrap", stA.Addrs[0])
	waitUntil(t, 20*time.Second, "A's provider record of hello to reach B", func() bool {
		return slices.Contains(b.meshProviders(helloOut), stA.PeerID)
	})
	runNix(t, append(nixArgs(storeDir(t, "client-b")),
		"--option", "trusted-public-keys", memberB.publicKey,
		"copy", "--from", b.cacheURL(), helloOut)...)
	waitUntil(t, 20*time.Second, "B's provider record of hello to reach A", func() bool {
		return slices.Contains(a.meshProviders(helloOut), memberB.peerID.String())
	})

	a.tamperNAR(helloOut)

	// C finds only A's record, rejects A's NAR and has no upstream.
	c := startNode(t, memberC.dataDir, storeDir(t, "store-c"), "--no-worker",
		"--mesh-listen", "/ip4/127.0.0.1/tcp/0", "--mesh-bootstrap", stA.Addrs[0])
	waitUntil(t, 20*time.Second, "C to see A provide hello", func() bool {
		return slices.Contains(c.meshProviders(helloOut), stA.PeerID)
	})
	client := storeDir(t, "client-c")
	copyArgs := append(nixArgs(client),
		"--option", "trusted-public-keys", memberC.publicKey,
		"--option", "require-sigs", "true",
		"copy", "--from", c.cacheURL(), helloOut)
	if _, err := tryNix(copyArgs...); err == nil {
		t.Fatal("nix copy from C succeeded with A as the only provider, want a failure")
	}

	logC := c.logText()
	if !strings.Contains(logC, `msg="blocked a peer that served bad data"`) {
		t.Error(`C's log has no "blocked a peer that served bad data"`)
	}
	if !strings.Contains(logC, "remote_peer_id="+stA.PeerID+" error=") {
		t.Errorf("C's log does not name A (%s) with the verification error", stA.PeerID)
	}
	// The zstd decoder checks the frame's content checksum before the
	// fetcher compares FileHash, and reports "CRC check failed".
	if !strings.Contains(logC, `error="peer served bad data: decompress: CRC check failed"`) &&
		!strings.Contains(logC, "hash differs from") {
		t.Error("C's log gives no checksum or hash failure for A's NAR")
	}
	if v := c.metricValue("gradient_mesh_fetches_total", `result="bad_data"`); v != 1 {
		t.Errorf("C's mesh fetches with bad data = %v, want 1", v)
	}

	// Once C trusts B, hello comes from B, and A stays blocked.
	c.mustCLI("mesh", "trust", memberB.peerID.String(), "--key", memberB.publicKey, "--org", "org-b")
	waitUntil(t, 20*time.Second, "C to see B provide hello", func() bool {
		return slices.Contains(c.meshProviders(helloOut), memberB.peerID.String())
	})
	runNix(t, copyArgs...)

	got, err := os.ReadFile(filepath.Join(client, helloOut))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("substituted hello = %q, want %q", got, want)
	}
	if !strings.Contains(c.logText(), `msg="fetched a path from a mesh peer for the cache" component=mesh hash_part=`) ||
		!strings.Contains(c.logText(), "remote_peer_id="+memberB.peerID.String()) {
		t.Errorf("C's log does not show hello fetched from B (%s)", memberB.peerID)
	}
	if v := c.metricValue("gradient_mesh_fetches_total", `result="bad_data"`); v != 1 {
		t.Errorf("C's mesh fetches with bad data after B = %v, want still 1 with A blocked", v)
	}
	if v := c.metricValue("gradient_mesh_fetches_total", `result="fetched"`); v < 1 {
		t.Errorf("C's mesh fetches = %v, want at least 1", v)
	}
}

// meshKilledFlake builds one derivation that sleeps long enough for the
// builder to be killed in the middle.
const meshKilledFlake = `{ outputs = { self }: {
  packages.x86_64-linux.slow = builtins.derivation {
    name = "slow"; system = "x86_64-linux"; builder = "/bin/sh";
    args = [ "-c" "sleep 15; echo slow > $out" ];
  };
}; }`

// TestMeshKilledPeerBuildsLocally runs two federated nodes whose build
// announcements live 5s. B evaluates while A builds a slow derivation and
// postpones it for A; then A is killed. B must build the derivation
// itself once A's announcement expires, long before A's ETA plus the
// slack.
func TestMeshKilledPeerBuildsLocally(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the test flake builds for x86_64-linux")
	}
	a, b, stA, drvPath := startBuildingOnPeer(t, meshKilledFlake, "--mesh-build-ttl", "5s")

	b.mustCLI("project", "evaluate", "demo/slow")
	waitUntil(t, 20*time.Second, "B to postpone slow for A", func() bool {
		return strings.Contains(b.logText(), "reason=postponed-for-peer")
	})
	if strings.Contains(b.logText(), `msg="job assigned"`) {
		t.Fatal("B assigned a job while A was building, want it postponed")
	}

	a.kill()

	var showB projectShow
	waitUntil(t, 45*time.Second, "B's evaluation to end", func() bool {
		decodeJSON(t, b.mustCLI("project", "show", "demo/slow", "--json"), &showB)
		switch showB.Evaluation.Status {
		case "failed", "succeeded", "aborted":
			return true
		}
		return false
	})
	if len(showB.Builds) != 1 || showB.Builds[0].DrvPath != drvPath {
		t.Fatalf("B's builds = %+v, want one of %s", showB.Builds, drvPath)
	}
	if got := showB.Builds[0].Status; got != "succeeded" {
		t.Errorf("B's build of slow is %q, want succeeded", got)
	}
	if showB.Builds[0].Outputs["out"] == "" {
		t.Error("B's build of slow has no output")
	}

	logB := b.logText()
	if !strings.Contains(logB, `msg="a peer's build ended without outputs, so the derivation is built here"`) {
		t.Error("B's log does not show A's build ending")
	}
	if !strings.Contains(logB, "remote_peer_id="+stA.PeerID+" event="+string(mesh.BuildExpired)) {
		t.Errorf("B's log does not show A's (%s) announcement expiring", stA.PeerID)
	}
	if !strings.Contains(logB, `msg="job assigned"`) {
		t.Error("B assigned no job, want a local build after A vanished")
	}
}
