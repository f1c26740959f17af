package upstream

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// The narinfos in ../testdata were written by nix 2.8 with nix copy and
// signed by the key in ../testdata/testdata-cache-1.pub.

const (
	depHash   = "3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf"
	testURL   = "http://127.0.0.1:8080/cache"
	storeDir  = "/nix/store"
	otherHash = "72sfclc5jb4sk40azqbvmriysa0gsbw9"
)

func readFile(t testing.TB, path string) string {
	t.Helper()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	return string(data)
}

// testdataNarInfos returns the nix-written narinfos by hash part and
// compression, such as "3y3x…/xz".
func testdataNarInfos(t testing.TB) map[string]string {
	t.Helper()

	paths, err := filepath.Glob("../testdata/*/*.narinfo")
	if err != nil {
		t.Fatal(err)
	}

	if len(paths) == 0 {
		t.Fatal("no narinfos in ../testdata")
	}

	narInfos := map[string]string{}
	for _, path := range paths {
		hashPart := strings.TrimSuffix(filepath.Base(path), ".narinfo")
		narInfos[hashPart+"/"+filepath.Base(filepath.Dir(path))] = readFile(t, path)
	}

	return narInfos
}

func newTestUpstream(t testing.TB) *Upstream {
	t.Helper()

	u, err := New(Config{
		URL:        testURL,
		PublicKeys: []string{strings.TrimSpace(readFile(t, "../testdata/testdata-cache-1.pub"))},
		StoreDir:   storeDir,
	})
	if err != nil {
		t.Fatal(err)
	}

	return u
}

// parseAndAccept runs the checks that NarInfo runs on a response body.
func parseAndAccept(u *Upstream, body, hashPart string) (*narinfo.NarInfo, string, error) {
	info, err := narinfo.Parse(strings.NewReader(body))
	if err != nil {
		return nil, "", err
	}

	narURL, err := u.accept(info, hashPart)
	if err != nil {
		return nil, "", err
	}

	return info, narURL, nil
}

func TestAcceptNixNarInfos(t *testing.T) {
	u := newTestUpstream(t)

	for name, body := range testdataNarInfos(t) {
		hashPart, _, _ := strings.Cut(name, "/")

		info, narURL, err := parseAndAccept(u, body, hashPart)
		if err != nil {
			t.Errorf("accept(%s) = %v, want nil", name, err)
			continue
		}

		if want := testURL + "/" + info.URL; narURL != want {
			t.Errorf("accept(%s) NAR URL = %q, want %q", name, narURL, want)
		}
	}
}

func TestAcceptRejects(t *testing.T) {
	u := newTestUpstream(t)
	dep := readFile(t, "../testdata/xz/"+depHash+".narinfo")
	unsigned := dep[:strings.Index(dep, "Sig: ")]

	tests := []struct {
		name     string
		body     string
		hashPart string
		want     string
	}{
		{name: "other hash part", body: dep, hashPart: otherHash, want: "requested hash part"},
		{name: "changed NarSize", body: strings.Replace(dep, "NarSize: 120", "NarSize: 121", 1), hashPart: depHash, want: "signature"},
		{name: "changed NarHash", body: strings.Replace(dep, "NarHash: sha256:00", "NarHash: sha256:11", 1), hashPart: depHash, want: "signature"},
		{name: "added reference", body: strings.Replace(dep, "References: ", "References: "+otherHash+"-x", 1), hashPart: depHash, want: "signature"},
		{name: "unsigned", body: unsigned, hashPart: depHash, want: "signature"},
		{name: "other store dir", body: strings.ReplaceAll(dep, "/nix/store/", "/gnu/store/"), hashPart: depHash, want: "store directory"},
		{name: "NAR on another host", body: strings.Replace(dep, "URL: nar/", "URL: http://127.0.0.2/nar/", 1), hashPart: depHash, want: "points away"},
		{name: "unsigned with a CA that gives another path", body: unsigned + "CA: fixed:r:sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv\n", hashPart: depHash, want: "signature"},
		// A text CA hashes the file, not the NAR, so nothing would check
		// this made-up NarHash against the content: a signature is needed.
		{name: "unsigned text CA", body: "StorePath: /nix/store/ybf7by4xvcgjhwilsg87rqz9di79bify-greeting\n" +
			"URL: nar/1hj1yci6nfbqqgzvd7l08gl5rkjdr5sbshbs1y6pd62jpzcscc8b.nar\nCompression: none\n" +
			"NarHash: sha256:1hj1yci6nfbqqgzvd7l08gl5rkjdr5sbshbs1y6pd62jpzcscc8b\nNarSize: 120\nReferences: \n" +
			"CA: text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq\n", hashPart: "ybf7by4xvcgjhwilsg87rqz9di79bify", want: "signature"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := parseAndAccept(u, tt.body, tt.hashPart)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("accept(%s) = %v, want an error containing %q", tt.name, err, tt.want)
			}
		})
	}
}

// FuzzAcceptNarInfo checks what the upstream checks accept. Such a
// narinfo names the requested path in the store directory and points at
// a NAR on the upstream's host. Its CA field proves it, or the trusted
// key signed its fingerprint.
func FuzzAcceptNarInfo(f *testing.F) {
	for name, body := range testdataNarInfos(f) {
		hashPart, _, _ := strings.Cut(name, "/")
		f.Add(body, hashPart)
	}

	u := newTestUpstream(f)

	f.Fuzz(func(t *testing.T, body, hashPart string) {
		info, narURL, err := parseAndAccept(u, body, hashPart)
		if err != nil {
			return
		}

		dir, _, err := narinfo.SplitStorePath(info.StorePath)
		if err != nil || dir != storeDir {
			t.Errorf("accepted StorePath %q is not in %s: %v", info.StorePath, storeDir, err)
		}

		if got := narinfo.HashPart(info.StorePath); got != hashPart {
			t.Errorf("accepted StorePath %q for requested hash part %q", info.StorePath, hashPart)
		}

		if !strings.HasPrefix(narURL, testURL+"/") {
			t.Errorf("accepted NAR URL %q is not under %s/", narURL, testURL)
		}

		if narinfo.CheckContentAddress(info) == nil {
			return
		}

		if err := narinfo.Verify(info, u.keys); err != nil {
			t.Fatalf("accepted a narinfo that neither its CA nor a signature proves: %v", err)
		}

		// The signature covers NarSize, so changing it must fail.
		info.NarSize++
		if _, err := u.accept(info, hashPart); err == nil {
			t.Errorf("accepted a signed narinfo after its NarSize changed")
		}
	})
}
