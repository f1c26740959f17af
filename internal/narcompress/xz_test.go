package narcompress

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"

	"github.com/ulikunitz/xz"
)

// testdataXZ returns the xz NAR files that `nix copy` wrote for the
// cache's tests.
func testdataXZ(t testing.TB) [][]byte {
	t.Helper()

	paths, err := filepath.Glob(filepath.Join("testdata", "xz", "*.nar.xz"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no xz NARs in testdata: %v", err)
	}

	var files [][]byte
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, data)
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

// hugeDictionary returns a nix xz file whose first block header names a
// dictionary of 2 GiB and has a valid CRC32, so a decoder without the
// check would allocate the dictionary.
func hugeDictionary(t testing.TB) []byte {
	t.Helper()

	data := bytes.Clone(testdataXZ(t)[0])

	// The block header follows the 12-byte stream header: its size byte,
	// flags, filter ID, property size and then the LZMA2 dictionary size
	// byte. Its last 4 bytes are the CRC32 of the bytes before them.
	const blockStart = 12
	data[blockStart+4] = 38

	headerEnd := blockStart + (int(data[blockStart])+1)*4
	crc := crc32.ChecksumIEEE(data[blockStart : headerEnd-4])
	binary.LittleEndian.PutUint32(data[headerEnd-4:headerEnd], crc)

	return data
}

func TestCheckXZAccepts(t *testing.T) {
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

	for i, nar := range testdataXZ(t) {
		tests = append(tests, struct {
			name string
			data []byte
		}{name: "nix file " + string(rune('0'+i)), data: nar})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckXZ(bytes.NewReader(tt.data), MaxWindow); err != nil {
				t.Errorf("CheckXZ(%s) = %v, want nil", tt.name, err)
			}

			// The checker passes the file through unchanged.
			passed, err := io.ReadAll(newXZChecker(bytes.NewReader(tt.data), MaxWindow))
			if err != nil || !bytes.Equal(passed, tt.data) {
				t.Errorf("read through the xz checker(%s) = %d bytes, %v, want the %d input bytes", tt.name, len(passed), err, len(tt.data))
			}
		})
	}
}

func TestCheckXZRejects(t *testing.T) {
	nixFile := testdataXZ(t)[0]

	otherFilter := bytes.Clone(nixFile)
	otherFilter[14] = 0x04 // the x86 BCJ filter

	tests := []struct {
		name    string
		data    []byte
		wantErr error
	}{
		{name: "dictionary over the limit", data: hugeDictionary(t), wantErr: ErrWindowTooLarge},
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
			err := CheckXZ(bytes.NewReader(tt.data), MaxWindow)
			if err == nil {
				t.Fatalf("CheckXZ(%s, %d bytes) = nil, want an error", tt.name, len(tt.data))
			}

			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("CheckXZ(%s) = %v, want %v", tt.name, err, tt.wantErr)
			}
		})
	}
}

func TestNewReaderRoundTrip(t *testing.T) {
	payload := append(randomBytes(t, 20000), bytes.Repeat([]byte("nar"), 20000)...)

	tests := []struct {
		name        string
		compression string
		file        []byte
	}{
		{name: "none", compression: "none", file: payload},
		{name: "xz in blocks of 4 KiB", compression: "xz", file: compressXZ(t, xz.WriterConfig{BlockSize: 4096}, payload)},
		{name: "xz in two streams", compression: "xz", file: bytes.Join([][]byte{
			compressXZ(t, xz.WriterConfig{}, payload[:100]),
			compressXZ(t, xz.WriterConfig{}, payload[100:]),
		}, []byte{0, 0, 0, 0})},
	}

	for _, tt := range tests {
		dec, err := NewReader(tt.compression, bytes.NewReader(tt.file))
		if err != nil {
			t.Errorf("NewReader(%s) = %v", tt.name, err)
			continue
		}

		got, err := io.ReadAll(dec)
		dec.Close()

		if err != nil || !bytes.Equal(got, payload) {
			t.Errorf("NewReader(%s) read %d bytes, %v, want the %d payload bytes", tt.name, len(got), err, len(payload))
		}
	}

	if _, err := NewReader("lz4", bytes.NewReader(payload)); !errors.Is(err, ErrUnsupported) {
		t.Errorf("NewReader(lz4) = %v, want ErrUnsupported", err)
	}
}

// TestNewReaderXZHugeDictionary checks that the decoder never allocates
// the 2 GiB that the block header names.
func TestNewReaderXZHugeDictionary(t *testing.T) {
	data := hugeDictionary(t)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	dec, err := NewReader("xz", bytes.NewReader(data))
	if err == nil {
		_, err = io.ReadAll(dec)
		dec.Close()
	}

	runtime.ReadMemStats(&after)

	if !errors.Is(err, ErrWindowTooLarge) {
		t.Errorf("NewReader(xz with a 2 GiB dictionary) read error = %v, want ErrWindowTooLarge", err)
	}

	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > MaxWindow {
		t.Errorf("NewReader(xz with a 2 GiB dictionary) allocated %d bytes, want at most %d", allocated, MaxWindow)
	}
}

// FuzzCheckXZ checks that the xz checker never panics, passes on only a
// prefix of its input, passes all of an accepted file, and that decoding
// an accepted file stays within the dictionary limit.
func FuzzCheckXZ(f *testing.F) {
	for _, nar := range testdataXZ(f) {
		f.Add(nar)
	}

	f.Add(compressXZ(f, xz.WriterConfig{BlockSize: 64}, bytes.Repeat([]byte("abc"), 100)))

	f.Fuzz(func(t *testing.T, data []byte) {
		passed, err := io.ReadAll(newXZChecker(bytes.NewReader(data), 1<<20))
		if !bytes.HasPrefix(data, passed) {
			t.Fatalf("xz checker passed %d bytes that are not a prefix of its input", len(passed))
		}

		if err != nil {
			return
		}

		if len(passed) != len(data) {
			t.Fatalf("xz checker accepted %d of %d bytes", len(passed), len(data))
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
