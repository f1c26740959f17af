package mesh

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/internal/narcompress"
)

// narInfoFor returns a narinfo that describes nar stored as file with
// compression.
func narInfoFor(nar, file []byte, compression string) *narinfo.NarInfo {
	narSum := sha256.Sum256(nar)
	fileSum := sha256.Sum256(file)
	return &narinfo.NarInfo{
		StorePath:   storePath("hello"),
		URL:         "nar/x",
		Compression: compression,
		NarHash:     mustHash(narSum[:]),
		NarSize:     uint64(len(nar)),
		FileHash:    mustHash(fileSum[:]),
		FileSize:    uint64(len(file)),
	}
}

func zstdCompress(t testing.TB, data []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	return enc.EncodeAll(data, nil)
}

func readVerified(file []byte, info *narinfo.NarInfo) ([]byte, error) {
	v, err := newVerifiedNAR(bytes.NewReader(file), info, int64(len(file)))
	if err != nil {
		return nil, err
	}
	defer v.Close()
	return io.ReadAll(v)
}

func TestVerifiedNAR(t *testing.T) {
	nar, err := os.ReadFile("testdata/hello.nar")
	if err != nil {
		t.Fatal(err)
	}
	compressed := zstdCompress(t, nar)
	compressedXZ := xzCompress(t, nar)
	hugeXZ := xzHugeDictionary(t, nar)
	flipped := bytes.Clone(nar)
	flipped[len(flipped)/2] ^= 1

	tests := []struct {
		name    string
		file    []byte
		info    *narinfo.NarInfo
		wantErr error
	}{
		{"none", nar, narInfoFor(nar, nar, "none"), nil},
		{"zstd", compressed, narInfoFor(nar, compressed, "zstd"), nil},
		{"flipped bit", flipped, narInfoFor(nar, nar, "none"), ErrBadData},
		{"short", nar[:len(nar)-1], narInfoFor(nar, nar, "none"), ErrBadData},
		{"long", append(bytes.Clone(nar), 0), narInfoFor(nar, nar, "none"), ErrBadData},
		{"zstd of other bytes", zstdCompress(t, flipped), narInfoFor(nar, compressed, "zstd"), ErrBadData},
		{"garbage as zstd", nar, narInfoFor(nar, nar, "zstd"), ErrBadData},
		{"xz", compressedXZ, narInfoFor(nar, compressedXZ, "xz"), nil},
		{"xz of other bytes", xzCompress(t, flipped), narInfoFor(nar, compressedXZ, "xz"), ErrBadData},
		{"garbage as xz", nar, narInfoFor(nar, nar, "xz"), ErrBadData},
		{"xz with a 2 GiB dictionary", hugeXZ, narInfoFor(nar, hugeXZ, "xz"), narcompress.ErrWindowTooLarge},
		{"unsupported compression", nar, narInfoFor(nar, nar, "lz4"), narcompress.ErrUnsupported},
	}

	for _, tt := range tests {
		got, err := readVerified(tt.file, tt.info)
		switch {
		case tt.wantErr == nil && (err != nil || !bytes.Equal(got, nar)):
			t.Errorf("read verified NAR (%s) = %d bytes, %v, want the NAR", tt.name, len(got), err)
		case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
			t.Errorf("read verified NAR (%s) = %v, want %v", tt.name, err, tt.wantErr)
		}
	}
}

// FuzzVerifiedNAR checks that the verifying reader returns the whole
// stream without error only when it is the NAR that the narinfo
// describes.
func FuzzVerifiedNAR(f *testing.F) {
	nar, err := os.ReadFile("testdata/hello.nar")
	if err != nil {
		f.Fatal(err)
	}
	compressed := zstdCompress(f, nar)
	f.Add(nar, false)
	f.Add(compressed, true)

	f.Fuzz(func(t *testing.T, file []byte, isZstd bool) {
		info := narInfoFor(nar, nar, "none")
		if isZstd {
			info = narInfoFor(nar, compressed, "zstd")
		}
		got, err := readVerified(file, info)
		if err == nil && !bytes.Equal(got, nar) {
			t.Fatalf("read verified NAR of %q = %q, nil error, want an error", file, got)
		}
	})
}
