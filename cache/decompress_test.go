package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/gradient-ci/gradient/internal/narcompress"
)

func testdataNARs(t testing.TB, compression string) [][]byte {
	t.Helper()

	paths, err := filepath.Glob(filepath.Join("testdata", compression, "nar", "*"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no testdata NARs for %s: %v", compression, err)
	}

	var files [][]byte
	for _, p := range paths {
		files = append(files, mustReadFile(t, p))
	}

	return files
}

// compressXZ compresses data with github.com/ulikunitz/xz using cfg.
func compressXZ(t testing.TB, cfg xz.WriterConfig, data []byte) []byte {
	t.Helper()

	var buf bytes.Buffer

	w, err := cfg.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

func randomBytes(t testing.TB, n int) []byte {
	t.Helper()

	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}

	return data
}

// TestScanNARMultiBlockXZ checks that scanNAR's xz check and the decoder
// agree on the layout of a file with many blocks.
func TestScanNARMultiBlockXZ(t *testing.T) {
	payload := append(randomBytes(t, 20000), bytes.Repeat([]byte("nar"), 20000)...)
	data := compressXZ(t, xz.WriterConfig{BlockSize: 4096}, payload)

	record, _, err := scanNAR(context.Background(), "xz", bytes.NewReader(data), uint64(len(payload)))
	if err != nil || record.NarSize != uint64(len(payload)) || record.FileSize != uint64(len(data)) {
		t.Errorf("scanNAR(multi-block xz) = %+v, %v, want NarSize %d, FileSize %d", record, err, len(payload), len(data))
	}
}

// TestScanNARRejectsLargeXZDictionary checks that an upload whose xz
// block header names a dictionary over the limit is a client error.
func TestScanNARRejectsLargeXZDictionary(t *testing.T) {
	data := bytes.Clone(testdataNARs(t, "xz")[0])
	data[16] = 38 // the dictionary size byte of the first block: 2 GiB

	_, _, err := scanNAR(context.Background(), "xz", bytes.NewReader(data), 1000)

	var uploadErr *uploadError
	if !errors.As(err, &uploadErr) || uploadErr.code != http.StatusBadRequest {
		t.Fatalf("scanNAR(xz with a 2 GiB dictionary) = %v, want a 400 *uploadError", err)
	}

	if want := narcompress.ErrWindowTooLarge.Error(); !strings.Contains(err.Error(), want) {
		t.Errorf("scanNAR(xz with a 2 GiB dictionary) = %q, want it to contain %q", err, want)
	}
}

func TestScanNARRejectsLargeZstdWindow(t *testing.T) {
	// A zstd frame with no content size and a window descriptor of
	// 0x88, meaning 2^(10+17) = 128 MiB, followed by an empty last raw
	// block.
	frame := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x88, 0x01, 0x00, 0x00}

	_, _, err := scanNAR(context.Background(), "zstd", bytes.NewReader(frame), 100)
	if err == nil {
		t.Errorf("scanNAR(zstd frame with a 128 MiB window) = nil, want an error")
	}
}

func TestScanNARStopsAfterNarSize(t *testing.T) {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}

	bomb := enc.EncodeAll(make([]byte, 64<<20), nil)
	enc.Close()

	record, _, err := scanNAR(context.Background(), "zstd", bytes.NewReader(bomb), 1000)
	if err != nil {
		t.Fatalf("scanNAR(64 MiB of zeros) = %v", err)
	}

	if record.NarSize != 1001 {
		t.Errorf("scanNAR(64 MiB of zeros, NarSize 1000).NarSize = %d, want 1001", record.NarSize)
	}

	if record.FileSize != uint64(len(bomb)) {
		t.Errorf("scanNAR(64 MiB of zeros).FileSize = %d, want %d, the whole file", record.FileSize, len(bomb))
	}
}

// FuzzScanNAR checks that scanning an uploaded file never panics and
// never decompresses more than NarSize+1 bytes.
func FuzzScanNAR(f *testing.F) {
	for i, compression := range []string{"none", "xz", "zstd"} {
		for _, nar := range testdataNARs(f, compression) {
			f.Add(uint8(i), nar)
		}
	}

	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		compression := []string{"none", "xz", "zstd"}[int(kind)%3]

		const narSize = 4096

		record, _, err := scanNAR(context.Background(), compression, bytes.NewReader(data), narSize)
		if err != nil {
			return
		}

		if record.NarSize > narSize+1 {
			t.Errorf("scanNAR(%s) decompressed %d bytes, want at most %d", compression, record.NarSize, narSize+1)
		}

		if record.FileSize != uint64(len(data)) {
			t.Errorf("scanNAR(%s).FileSize = %d, want %d", compression, record.FileSize, len(data))
		}
	})
}

// FuzzUploadNarInfo uploads a fuzzed NAR file and then a fuzzed narinfo,
// and checks that whatever the cache accepts it serves consistently. One
// store serves all inputs: with a store per input the fuzzer reported only
// a few executions in 10 seconds.
func FuzzUploadNarInfo(f *testing.F) {
	for _, compression := range []string{"xz", "zstd", "none"} {
		dep := loadUpload(f, compression, depHash)
		f.Add(dep.narInfo, dep.nar)
	}

	s := newTestStore(f, nil)

	f.Fuzz(func(t *testing.T, narInfo string, nar []byte) {
		ctx := context.Background()

		info, err := parseNarInfoString(narInfo)
		if err != nil {
			return
		}

		match := narPathRe.FindStringSubmatch(info.URL)
		if match == nil {
			return
		}

		if err := s.putUploadedNAR(ctx, match[1], bytes.NewReader(nar)); err != nil {
			t.Fatalf("putUploadedNAR: %v", err)
		}

		if err := s.putUploadedNarInfo(ctx, depHash, bytes.NewReader([]byte(narInfo))); err != nil {
			var uploadErr *uploadError
			if !errors.As(err, &uploadErr) {
				t.Fatalf("putUploadedNarInfo = %v, want nil or an *uploadError", err)
			}

			return
		}

		stored, err := s.NarInfo(ctx, depHash)
		if err != nil {
			t.Fatalf("NarInfo after an accepted upload: %v", err)
		}

		f, err := os.Open(filepath.Join(s.narDir, stored.URL[len("nar/"):]))
		if err != nil {
			t.Fatalf("open the NAR of an accepted upload: %v", err)
		}
		defer f.Close()

		if _, err := measureNAR(ctx, stored.Compression, f, stored); err != nil {
			t.Errorf("stored narinfo does not match its NAR: %v", err)
		}
	})
}
