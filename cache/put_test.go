package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	hashA = "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc"
	hashB = "00bgd045z0d4icpbc2yyz4gx48ak44la"
)

func TestPutNARStoresSignedNarInfo(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))
	info := pathInfoFor(hashA, "hello", narBytes)

	if err := s.PutNAR(ctx, info, bytes.NewReader(narBytes)); err != nil {
		t.Fatalf("PutNAR: %v", err)
	}

	ni, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatalf("NarInfo(%q): %v", hashA, err)
	}

	if ni.StorePath != info.StorePath {
		t.Errorf("NarInfo(%q).StorePath = %q, want %q", hashA, ni.StorePath, info.StorePath)
	}

	if ni.Compression != "zstd" {
		t.Errorf("NarInfo(%q).Compression = %q, want zstd", hashA, ni.Compression)
	}

	wantURL := "nar/" + strings.TrimPrefix(ni.FileHash.String(), "sha256:") + ".nar.zst"
	if ni.URL != wantURL {
		t.Errorf("NarInfo(%q).URL = %q, want %q", hashA, ni.URL, wantURL)
	}

	public, err := narinfo.ParsePublicKey(testPublicKey)
	if err != nil {
		t.Fatal(err)
	}

	if err := narinfo.Verify(ni, []narinfo.PublicKey{public}); err != nil {
		t.Errorf("Verify(NarInfo(%q)) = %v, want nil", hashA, err)
	}

	compressed, err := os.ReadFile(filepath.Join(s.narDir, strings.TrimPrefix(ni.URL, "nar/")))
	if err != nil {
		t.Fatalf("read stored NAR: %v", err)
	}

	if uint64(len(compressed)) != ni.FileSize {
		t.Errorf("stored NAR has %d bytes, FileSize = %d", len(compressed), ni.FileSize)
	}

	dec, err := zstd.NewReader(bytes.NewReader(compressed))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()

	got, err := io.ReadAll(dec)
	if err != nil {
		t.Fatalf("decompress stored NAR: %v", err)
	}

	if !bytes.Equal(got, narBytes) {
		t.Errorf("stored NAR decompresses to %d bytes that differ from the %d bytes put", len(got), len(narBytes))
	}
}

func TestPutNARRejectsMismatch(t *testing.T) {
	narBytes := makeNAR(t, []byte("hello\n"))
	other := makeNAR(t, []byte("hellO\n"))

	tests := []struct {
		name string
		body []byte
	}{
		{name: "wrong hash", body: other},
		{name: "short body", body: narBytes[:len(narBytes)-8]},
		{name: "long body", body: append(append([]byte{}, narBytes...), 0, 0, 0, 0, 0, 0, 0, 0)},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newTestStore(t, nil)
			info := pathInfoFor(hashA, "hello", narBytes)

			err := s.PutNAR(ctx, info, bytes.NewReader(tt.body))
			if !errors.Is(err, ErrHashMismatch) {
				t.Fatalf("PutNAR = %v, want an error wrapping ErrHashMismatch", err)
			}

			has, err := s.HasPath(ctx, info.StorePath)
			if err != nil || has {
				t.Errorf("HasPath after rejected PutNAR = %v, %v, want false, nil", has, err)
			}

			assertDirEmpty(t, s.narDir)
			assertDirEmpty(t, s.tmpDir)
		})
	}
}

func assertDirEmpty(t *testing.T, dir string) {
	t.Helper()

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}

	for _, e := range entries {
		t.Errorf("%s contains %q, want it empty", dir, e.Name())
	}
}

// TestPutNARKeepsGivenSignatures checks that PutNAR keeps the signatures
// of its PathInfo beside the cache's own, and rejects a malformed one.
func TestPutNARKeepsGivenSignatures(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))
	info := pathInfoFor(hashA, "hello", narBytes)

	peerKey, peerPublic, err := narinfo.GenerateKey("peer-1")
	if err != nil {
		t.Fatal(err)
	}
	ni, err := s.narInfoFromPathInfo(info)
	if err != nil {
		t.Fatal(err)
	}
	if err := narinfo.Sign(ni, peerKey); err != nil {
		t.Fatal(err)
	}

	bad := info
	bad.Signatures = []string{"no-colon"}
	if err := s.PutNAR(ctx, bad, bytes.NewReader(narBytes)); err == nil || !strings.Contains(err.Error(), "Sig") {
		t.Errorf("PutNAR(malformed signature) = %v, want an error naming Sig", err)
	}

	info.Signatures = []string{ni.Signatures[0].String()}
	if err := s.PutNAR(ctx, info, bytes.NewReader(narBytes)); err != nil {
		t.Fatalf("PutNAR: %v", err)
	}
	stored, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatal(err)
	}
	own, err := narinfo.ParsePublicKey(testPublicKey)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []narinfo.PublicKey{peerPublic, own} {
		if err := narinfo.Verify(stored, []narinfo.PublicKey{key}); err != nil {
			t.Errorf("Verify(stored narinfo, %s) = %v, want nil", key.Name, err)
		}
	}
}
