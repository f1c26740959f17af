package cache

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
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

func TestCheckXZDictionariesAccepts(t *testing.T) {
	payload := append(randomBytes(t, 20000), bytes.Repeat([]byte("nar"), 20000)...)

	tests := []struct {
		name string
		data []byte
	}{
		{name: "CRC-64 blocks of 4 KiB", data: compressXZ(t, xz.WriterConfig{BlockSize: 4096}, payload)},
		{name: "CRC-32", data: compressXZ(t, xz.WriterConfig{CheckSum: xz.CRC32}, payload)},
		{name: "SHA-256", data: compressXZ(t, xz.WriterConfig{CheckSum: xz.SHA256}, payload)},
		{name: "no check", data: compressXZ(t, xz.WriterConfig{NoCheckSum: true}, payload)},
		{name: "empty", data: compressXZ(t, xz.WriterConfig{}, nil)},
		{
			name: "two streams with padding",
			data: bytes.Join([][]byte{
				compressXZ(t, xz.WriterConfig{}, payload[:100]),
				compressXZ(t, xz.WriterConfig{}, payload[100:]),
			}, []byte{0, 0, 0, 0}),
		},
	}

	for i, nar := range testdataNARs(t, "xz") {
		tests = append(tests, struct {
			name string
			data []byte
		}{name: "nix file " + string(rune('0'+i)), data: nar})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := checkXZDictionaries(bytes.NewReader(tt.data), maxDecoderWindow); err != nil {
				t.Errorf("checkXZDictionaries(%s) = %v, want nil", tt.name, err)
			}
		})
	}

	// The streams after the check must decode to the payload, so the
	// walk and the decoder agree on the layout.
	data := compressXZ(t, xz.WriterConfig{BlockSize: 4096}, payload)

	record, _, err := scanNAR(context.Background(), "xz", bytes.NewReader(data), uint64(len(payload)))
	if err != nil || record.NarSize != uint64(len(payload)) || record.FileSize != uint64(len(data)) {
		t.Errorf("scanNAR(multi-block xz) = %+v, %v, want NarSize %d, FileSize %d", record, err, len(payload), len(data))
	}
}

func TestCheckXZDictionariesRejects(t *testing.T) {
	nixFile := testdataNARs(t, "xz")[0]

	bigDictionary := bytes.Clone(nixFile)
	bigDictionary[16] = 38 // 2 GiB

	otherFilter := bytes.Clone(nixFile)
	otherFilter[14] = 0x04 // the x86 BCJ filter

	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		{name: "dictionary over the limit", data: bigDictionary, wantErr: errDecoderLimit},
		{name: "other filter", data: otherFilter},
		{name: "not xz", data: []byte("nix-archive-1")},
		{name: "garbage after stream", data: append(bytes.Clone(nixFile), 1, 2, 3, 4)},
		{name: "padding not a multiple of 4", data: append(bytes.Clone(nixFile), 0, 0)},
	}

	for n := 1; n < len(nixFile); n++ {
		tests = append(tests, struct {
			name    string
			data    []byte
			wantErr error
		}{name: "truncated", data: nixFile[:n]})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkXZDictionaries(bytes.NewReader(tt.data), maxDecoderWindow)
			if err == nil {
				t.Fatalf("checkXZDictionaries(%s, %d bytes) = nil, want an error", tt.name, len(tt.data))
			}

			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("checkXZDictionaries(%s) = %v, want %v", tt.name, err, tt.wantErr)
			}
		})
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

// FuzzCheckXZDictionaries checks that the xz header walk never panics and
// that decoding whatever it accepts stays within the dictionary limit.
func FuzzCheckXZDictionaries(f *testing.F) {
	for _, nar := range testdataNARs(f, "xz") {
		f.Add(nar)
	}

	f.Add(compressXZ(f, xz.WriterConfig{BlockSize: 64}, bytes.Repeat([]byte("abc"), 100)))

	f.Fuzz(func(t *testing.T, data []byte) {
		if err := checkXZDictionaries(bytes.NewReader(data), 1<<20); err != nil {
			return
		}

		// The decoder allocates at most the checked dictionary, so
		// decoding an accepted file must stay cheap.
		dec, err := xz.NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}

		io.Copy(io.Discard, io.LimitReader(dec, 1<<20))
	})
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
