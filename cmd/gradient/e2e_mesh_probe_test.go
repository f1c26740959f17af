package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache"
	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh"
)

// httpGet returns the status code and body of a GET of url.
func httpGet(t *testing.T, url string) (int, []byte) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body
}

// TestMeshUpstreamPeerServesXZ runs two federated nodes
// without bootstrap addresses. A gets B as an upstream through the CLI
// after both started, and must find B's mesh endpoint and connect to it.
// B then pulls a path through from an xz binary cache that
// `nix copy --to file://DIR?compression=xz` wrote, and A substitutes
// that path from B over the mesh, which decompresses and verifies xz.
func TestMeshUpstreamPeerServesXZ(t *testing.T) {
	requireNix(t)

	memberA, memberB := newMeshMember(t, "a"), newMeshMember(t, "b")
	writeFederation(t, map[string]meshMember{"org-a": memberA, "org-b": memberB})

	a := startNode(t, memberA.dataDir, storeDir(t, "store-a"), "--no-worker", "--mesh-listen", "/ip4/127.0.0.1/tcp/0")
	b := startNode(t, memberB.dataDir, storeDir(t, "store-b"), "--no-worker", "--mesh-listen", "/ip4/127.0.0.1/tcp/0")
	stB := b.meshStatus()

	// The upstream list changes after A's probe at start, so only a later
	// probe can find B.
	a.mustCLI("cache", "upstream", "add", "main", b.cacheURL(), "--key", memberB.publicKey)
	waitUntil(t, 25*time.Second, "A to connect to B, its new upstream", func() bool {
		var peers []mesh.PeerInfo
		decodeJSON(t, a.mustCLI("mesh", "peers", "--json"), &peers)
		return len(peers) == 1 && peers[0].PeerID == stB.PeerID
	})

	// The stand-in upstream of B: a file:// binary cache with xz NARs,
	// served as static files on loopback.
	source := storeDir(t, "source")
	file := filepath.Join(t.TempDir(), "payload.txt")
	if err := os.WriteFile(file, []byte(strings.Repeat("an xz NAR for the mesh\n", 100)), 0o644); err != nil {
		t.Fatal(err)
	}
	storePath := strings.TrimSpace(runNix(t, append(nixArgs(source), "store", "add-file", file)...))

	secret, public, err := cache.GenerateKey("xz-upstream-1")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "upstream.secret")
	if err := os.WriteFile(keyFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	binaryCache := t.TempDir()
	runNix(t, append(nixArgs(source), "copy", "--to", "file://"+binaryCache+"?compression=xz&secret-key="+keyFile, storePath)...)
	static := httptest.NewServer(http.FileServer(http.Dir(binaryCache)))
	t.Cleanup(static.Close)

	b.mustCLI("cache", "upstream", "add", "main", static.URL, "--key", public)

	// A request for the narinfo and then the NAR makes B pull both.
	hashPart := narinfo.HashPart(storePath)
	code, body := httpGet(t, b.cacheURL()+"/"+hashPart+".narinfo")
	if code != http.StatusOK {
		t.Fatalf("GET %s.narinfo from B = %d %q, want 200", hashPart, code, body)
	}
	infoB, err := narinfo.Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	if infoB.Compression != "xz" {
		t.Fatalf("B's narinfo of %s has Compression %q, want xz as the upstream wrote it", storePath, infoB.Compression)
	}
	if code, body := httpGet(t, b.cacheURL()+"/"+infoB.URL); code != http.StatusOK {
		t.Fatalf("GET %s from B = %d %q, want 200", infoB.URL, code, body)
	}

	waitUntil(t, 20*time.Second, "B's provider record to reach A", func() bool {
		return slices.Contains(a.meshProviders(storePath), stB.PeerID)
	})

	code, body = httpGet(t, a.cacheURL()+"/"+hashPart+".narinfo")
	if code != http.StatusOK {
		t.Fatalf("GET %s.narinfo from A = %d %q, want 200", hashPart, code, body)
	}
	infoA, err := narinfo.Parse(strings.NewReader(string(body)))
	if err != nil {
		t.Fatal(err)
	}
	if infoA.NarHash.String() != infoB.NarHash.String() || infoA.NarSize != infoB.NarSize {
		t.Errorf("A's narinfo of %s has NarHash %s, NarSize %d, want B's %s, %d",
			storePath, infoA.NarHash, infoA.NarSize, infoB.NarHash, infoB.NarSize)
	}
	// The node's log reaches the test through a pipe, so the line may
	// arrive a moment after the response.
	fromMesh := func() bool {
		return slices.ContainsFunc(strings.Split(a.logText(), "\n"), func(line string) bool {
			return strings.Contains(line, "fetched a path from a mesh peer for the cache") &&
				strings.Contains(line, hashPart) && strings.Contains(line, stB.PeerID)
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for !fromMesh() && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if !fromMesh() {
		t.Errorf("A's log shows no mesh fetch of %s from B, want the path from B over the mesh, not over HTTP", path.Base(storePath))
	}
}
