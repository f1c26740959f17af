package cache

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// The directories testdata/xz, testdata/zstd and testdata/none were written
// by nix 2.8 with nix copy --to 'file://DIR?compression=C&secret-key=sk'
// for a path gradient-top that refers to gradient-dep. The key's public
// half is testdata/testdata-cache-1.pub.

const (
	depHash = "3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf"
	topHash = "72sfclc5jb4sk40azqbvmriysa0gsbw9"
	depPath = "/nix/store/" + depHash + "-gradient-dep"
)

// upload is one nix-written path: its narinfo and its NAR file as nix
// uploads them.
type upload struct {
	hashPart string
	narInfo  string
	narURL   string
	nar      []byte
}

func loadUpload(t testing.TB, compression, hashPart string) upload {
	t.Helper()

	dir := filepath.Join("testdata", compression)

	narInfo, err := os.ReadFile(filepath.Join(dir, hashPart+".narinfo"))
	if err != nil {
		t.Fatal(err)
	}

	info, err := narinfo.Parse(bytes.NewReader(narInfo))
	if err != nil {
		t.Fatal(err)
	}

	nar, err := os.ReadFile(filepath.Join(dir, info.URL))
	if err != nil {
		t.Fatal(err)
	}

	return upload{hashPart: hashPart, narInfo: string(narInfo), narURL: info.URL, nar: nar}
}

// uploadServer serves s at its root and authorizes requests that carry
// the Basic password e2eToken.
func uploadServer(t *testing.T, s *Store) *httptest.Server {
	t.Helper()

	srv := httptest.NewServer(s.Handler(HandlerOptions{
		Authorize: func(r *http.Request) bool {
			_, password, ok := r.BasicAuth()
			return ok && password == e2eToken
		},
	}))
	t.Cleanup(srv.Close)

	return srv
}

func put(t *testing.T, url string, body []byte) (*http.Response, string) {
	t.Helper()

	req, err := http.NewRequest(http.MethodPut, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	req.SetBasicAuth("gradient", e2eToken)

	resp, data := doRequest(t, req)

	return resp, string(data)
}

func (u upload) put(t *testing.T, srv *httptest.Server) {
	t.Helper()

	if resp, body := put(t, srv.URL+"/"+u.narURL, u.nar); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s = %d %q, want 200", u.narURL, resp.StatusCode, body)
	}

	if resp, body := put(t, srv.URL+"/"+u.hashPart+".narinfo", []byte(u.narInfo)); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s.narinfo = %d %q, want 200", u.hashPart, resp.StatusCode, body)
	}
}

func TestUploadNixFiles(t *testing.T) {
	nixKey, err := narinfo.ParsePublicKey(string(mustReadFile(t, "testdata/testdata-cache-1.pub")))
	if err != nil {
		t.Fatal(err)
	}

	for _, compression := range []string{"xz", "zstd", "none"} {
		t.Run(compression, func(t *testing.T) {
			ctx := context.Background()
			s := newTestStore(t, nil)
			srv := uploadServer(t, s)
			ownKey, err := narinfo.ParsePublicKey(s.PublicKey())
			if err != nil {
				t.Fatal(err)
			}

			dep := loadUpload(t, compression, depHash)
			top := loadUpload(t, compression, topHash)
			dep.put(t, srv)
			top.put(t, srv)

			for _, u := range []upload{dep, top} {
				resp, body := get(t, srv.URL+"/"+u.hashPart+".narinfo")
				if resp.StatusCode != http.StatusOK {
					t.Fatalf("GET %s.narinfo = %d, want 200", u.hashPart, resp.StatusCode)
				}

				info, err := narinfo.Parse(bytes.NewReader(body))
				if err != nil {
					t.Fatalf("parse served narinfo: %v", err)
				}

				if err := narinfo.Verify(info, []narinfo.PublicKey{ownKey}); err != nil {
					t.Errorf("Verify(%s.narinfo, cache key) = %v, want nil", u.hashPart, err)
				}

				if err := narinfo.Verify(info, []narinfo.PublicKey{nixKey}); err != nil {
					t.Errorf("Verify(%s.narinfo, uploader's key) = %v, want nil because its Sig is kept", u.hashPart, err)
				}

				if info.URL != u.narURL {
					t.Errorf("served URL = %q, want nix's %q", info.URL, u.narURL)
				}

				resp, nar := get(t, srv.URL+"/"+info.URL)
				if resp.StatusCode != http.StatusOK || !bytes.Equal(nar, u.nar) {
					t.Errorf("GET %s = %d with %d bytes, want 200 with the %d uploaded bytes", info.URL, resp.StatusCode, len(nar), len(u.nar))
				}
			}

			assertDirEmpty(t, s.incomingDir)
			assertDirEmpty(t, s.tmpDir)

			missing, err := s.Missing(ctx, []string{depPath, "/nix/store/" + topHash + "-gradient-top", "/nix/store/" + hashA + "-absent"})
			if err != nil || len(missing) != 1 || !strings.HasSuffix(missing[0], "-absent") {
				t.Errorf("Missing(dep, top, absent) = %q, %v, want only absent", missing, err)
			}
		})
	}
}

func TestUploadReusesStoredNAR(t *testing.T) {
	s := newTestStore(t, nil)
	srv := uploadServer(t, s)
	dep := loadUpload(t, "xz", depHash)
	dep.put(t, srv)

	// nix skips the NAR upload when a HEAD request finds the file.
	resp, _ := do(t, http.MethodHead, srv.URL+"/"+dep.narURL, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s = %d, want 200", dep.narURL, resp.StatusCode)
	}

	if resp, body := put(t, srv.URL+"/"+dep.hashPart+".narinfo", []byte(dep.narInfo)); resp.StatusCode != http.StatusOK {
		t.Errorf("PUT narinfo again without its NAR = %d %q, want 200", resp.StatusCode, body)
	}

	tampered := strings.Replace(dep.narInfo, "NarSize: 120", "NarSize: 121", 1)
	if resp, body := put(t, srv.URL+"/"+dep.hashPart+".narinfo", []byte(tampered)); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "NarSize") {
		t.Errorf("PUT narinfo with wrong NarSize for a stored NAR = %d %q, want 400 naming NarSize", resp.StatusCode, body)
	}
}

func TestUploadRejects(t *testing.T) {
	depXZ := loadUpload(t, "xz", depHash)
	depNone := loadUpload(t, "none", depHash)
	topXZ := loadUpload(t, "xz", topHash)

	flipped := bytes.Clone(depNone.nar)
	flipped[len(flipped)-20] ^= 1

	bigDictionary := bytes.Clone(depXZ.nar)
	// Byte 16 is the LZMA2 dictionary size of the first block: it follows
	// the 12-byte stream header and the block header's size, flags,
	// filter id and properties size bytes. 40 means 4 GiB - 1.
	bigDictionary[16] = 40

	tests := []struct {
		name     string
		narURL   string // PUT first unless empty
		nar      []byte
		path     string // then PUT narinfo here
		narInfo  string
		noAuth   bool
		header   http.Header
		wantCode int
		wantText string
	}{
		{
			name: "no token", path: depHash + ".narinfo", narInfo: depXZ.narInfo, noAuth: true,
			wantCode: http.StatusUnauthorized, wantText: "token",
		},
		{
			name: "tampered NarSize", narURL: depXZ.narURL, nar: depXZ.nar,
			path: depHash + ".narinfo", narInfo: strings.Replace(depXZ.narInfo, "NarSize: 120", "NarSize: 119", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field NarSize",
		},
		{
			name: "tampered NarHash", narURL: depXZ.narURL, nar: depXZ.nar,
			path:     depHash + ".narinfo",
			narInfo:  strings.Replace(depXZ.narInfo, "NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv", "NarHash: sha256:10kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field NarHash",
		},
		{
			name: "tampered NAR", narURL: depNone.narURL, nar: flipped,
			path: depHash + ".narinfo", narInfo: depNone.narInfo,
			wantCode: http.StatusBadRequest, wantText: "narinfo field NarHash",
		},
		{
			name: "tampered FileSize", narURL: depXZ.narURL, nar: depXZ.nar,
			path: depHash + ".narinfo", narInfo: strings.Replace(depXZ.narInfo, "FileSize: 128", "FileSize: 127", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field FileSize",
		},
		{
			name: "tampered FileHash", narURL: depXZ.narURL, nar: depXZ.nar,
			path:     depHash + ".narinfo",
			narInfo:  strings.Replace(depXZ.narInfo, "FileHash: sha256:1x", "FileHash: sha256:0x", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field FileHash",
		},
		{
			name: "NAR not uploaded", path: depHash + ".narinfo", narInfo: depXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: "narinfo field URL",
		},
		{
			name: "reference not in cache", narURL: topXZ.narURL, nar: topXZ.nar,
			path: topHash + ".narinfo", narInfo: topXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: depPath,
		},
		{
			name: "narinfo under another hash", narURL: depXZ.narURL, nar: depXZ.nar,
			path: topHash + ".narinfo", narInfo: depXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: "narinfo field StorePath",
		},
		{
			name: "Compression not matching file name", narURL: depXZ.narURL, nar: depXZ.nar,
			path: depHash + ".narinfo", narInfo: strings.Replace(depXZ.narInfo, "Compression: xz", "Compression: zstd", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field Compression",
		},
		{
			name: "URL with traversal", path: depHash + ".narinfo",
			narInfo:  strings.Replace(depXZ.narInfo, "URL: nar/", "URL: nar/../../", 1),
			wantCode: http.StatusBadRequest, wantText: "narinfo field URL",
		},
		{
			name: "xz dictionary too large", narURL: depXZ.narURL, nar: bigDictionary,
			path: depHash + ".narinfo", narInfo: depXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: "compression window too large",
		},
		{
			name: "not xz", narURL: depXZ.narURL, nar: depNone.nar,
			path: depHash + ".narinfo", narInfo: depXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: "narinfo field Compression",
		},
		{
			name: "invalid narinfo", path: depHash + ".narinfo", narInfo: "StorePath: /nix/store/x\n",
			wantCode: http.StatusBadRequest, wantText: "narinfo field StorePath",
		},
		{
			name: "narinfo too large", path: depHash + ".narinfo", narInfo: depXZ.narInfo + strings.Repeat("X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\n", narinfo.MaxSize/16),
			wantCode: http.StatusRequestEntityTooLarge,
		},
		{
			name: "NAR with traversal", path: "nar/../" + depHash + ".narinfo", narInfo: depXZ.narInfo,
			wantCode: http.StatusBadRequest, wantText: "invalid path",
		},
		{
			name: "NAR with bad name", path: "nar/passwd", narInfo: "x",
			wantCode: http.StatusBadRequest, wantText: "invalid NAR file name",
		},
		{
			name: "NAR with gz extension", path: "nar/1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j.nar.gz", narInfo: "x",
			wantCode: http.StatusBadRequest, wantText: "invalid NAR file name",
		},
		{
			name: "unknown path", path: "etc/passwd", narInfo: "x",
			wantCode: http.StatusBadRequest, wantText: "invalid upload path",
		},
		{
			name: "log upload", path: "log/m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep.drv", narInfo: "x",
			wantCode: http.StatusForbidden, wantText: "does not accept",
		},
		{
			name: "compressed body", path: depHash + ".narinfo", narInfo: depXZ.narInfo,
			header:   http.Header{"Content-Encoding": {"gzip"}},
			wantCode: http.StatusUnsupportedMediaType, wantText: "Content-Encoding",
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newTestStore(t, nil)
			srv := uploadServer(t, s)

			if tt.narURL != "" {
				if resp, body := put(t, srv.URL+"/"+tt.narURL, tt.nar); resp.StatusCode != http.StatusOK {
					t.Fatalf("PUT %s = %d %q, want 200", tt.narURL, resp.StatusCode, body)
				}
			}

			req, err := http.NewRequest(http.MethodPut, srv.URL+"/"+tt.path, strings.NewReader(tt.narInfo))
			if err != nil {
				t.Fatal(err)
			}

			if !tt.noAuth {
				req.SetBasicAuth("gradient", e2eToken)
			}

			for k, v := range tt.header {
				req.Header[k] = v
			}

			resp, body := doRequest(t, req)

			if resp.StatusCode != tt.wantCode {
				t.Errorf("PUT %s = %d %q, want %d", tt.path, resp.StatusCode, body, tt.wantCode)
			}

			if !strings.Contains(string(body), tt.wantText) {
				t.Errorf("PUT %s body = %q, want it to contain %q", tt.path, body, tt.wantText)
			}

			for _, hashPart := range []string{depHash, topHash} {
				if _, err := s.NarInfo(ctx, hashPart); !errors.Is(err, ErrNotFound) {
					t.Errorf("NarInfo(%s) after rejected upload = %v, want ErrNotFound", hashPart, err)
				}
			}

			assertDirEmpty(t, s.narDir)
			assertDirEmpty(t, s.tmpDir)
		})
	}
}

func TestUploadRejectsLargeNAR(t *testing.T) {
	s := newTestStore(t, func(cfg *Config) { cfg.MaxNARSize = 100 })
	srv := uploadServer(t, s)
	dep := loadUpload(t, "xz", depHash)

	resp, body := put(t, srv.URL+"/"+dep.narURL, dep.nar)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("PUT %d-byte NAR with MaxNARSize 100 = %d %q, want 413", len(dep.nar), resp.StatusCode, body)
	}

	assertDirEmpty(t, s.incomingDir)
	assertDirEmpty(t, s.tmpDir)
}

func TestRemoveStaleUploads(t *testing.T) {
	ctx := context.Background()
	clock := &fakeClock{now: time.Now()}
	s := newTestStore(t, func(cfg *Config) { cfg.Clock = clock })
	srv := uploadServer(t, s)
	dep := loadUpload(t, "xz", depHash)

	if resp, body := put(t, srv.URL+"/"+dep.narURL, dep.nar); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT %s = %d %q, want 200", dep.narURL, resp.StatusCode, body)
	}

	removed, err := s.RemoveStaleUploads(ctx)
	if err != nil || removed != 0 {
		t.Errorf("RemoveStaleUploads right after the upload = %d, %v, want 0, nil", removed, err)
	}

	clock.Advance(DefaultUploadTTL + time.Minute)

	removed, err = s.RemoveStaleUploads(ctx)
	if err != nil || removed != 1 {
		t.Errorf("RemoveStaleUploads after the TTL = %d, %v, want 1, nil", removed, err)
	}

	assertDirEmpty(t, s.incomingDir)

	resp, body := put(t, srv.URL+"/"+dep.hashPart+".narinfo", []byte(dep.narInfo))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "was not uploaded") {
		t.Errorf("PUT narinfo after its NAR expired = %d %q, want 400 saying it was not uploaded", resp.StatusCode, body)
	}
}

func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	return data
}

func TestUploadAdoptsNARWithoutRecord(t *testing.T) {
	s := newTestStore(t, nil)
	srv := uploadServer(t, s)
	dep := loadUpload(t, "zstd", depHash)

	// A crash after moving a NAR into place and before storing its
	// narinfo leaves the file without a record.
	fileName := strings.TrimPrefix(dep.narURL, "nar/")
	if err := os.WriteFile(filepath.Join(s.narDir, fileName), dep.nar, 0o644); err != nil {
		t.Fatal(err)
	}

	resp, _ := do(t, http.MethodHead, srv.URL+"/"+dep.narURL, nil, nil)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD %s = %d, want 200", dep.narURL, resp.StatusCode)
	}

	tampered := strings.Replace(dep.narInfo, "NarSize: 120", "NarSize: 121", 1)
	if resp, body := put(t, srv.URL+"/"+dep.hashPart+".narinfo", []byte(tampered)); resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "NarSize") {
		t.Errorf("PUT narinfo with wrong NarSize for an unrecorded NAR = %d %q, want 400 naming NarSize", resp.StatusCode, body)
	}

	if resp, body := put(t, srv.URL+"/"+dep.hashPart+".narinfo", []byte(dep.narInfo)); resp.StatusCode != http.StatusOK {
		t.Errorf("PUT narinfo for an unrecorded NAR = %d %q, want 200", resp.StatusCode, body)
	}
}
