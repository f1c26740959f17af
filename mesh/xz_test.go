package mesh

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"runtime"
	"testing"

	"github.com/ulikunitz/xz"
)

// xzCompress compresses data with github.com/ulikunitz/xz, whose blocks
// use LZMA2 alone, as nix's do.
func xzCompress(t testing.TB, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := xz.WriterConfig{}.NewWriter(&buf)
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

// xzHugeDictionary returns data compressed with xz whose first block
// header names a dictionary of 2 GiB and has a valid CRC32, so a decoder
// without a dictionary check would allocate 2 GiB.
func xzHugeDictionary(t testing.TB, data []byte) []byte {
	t.Helper()
	file := xzCompress(t, data)

	// The block header follows the 12-byte stream header: size byte,
	// flags, the optional sizes, filter ID 0x21, property size 1 and the
	// dictionary size byte. Its last 4 bytes are the CRC32 of the rest.
	const blockStart = 12
	if flags := file[blockStart+1]; flags != 0 {
		t.Fatalf("xz block flags = %#x, want 0: one filter and no sizes", flags)
	}
	if file[blockStart+2] != 0x21 || file[blockStart+3] != 1 {
		t.Fatalf("xz block filter = %#x with %d property bytes, want LZMA2 with 1", file[blockStart+2], file[blockStart+3])
	}
	file[blockStart+4] = 38

	headerEnd := blockStart + (int(file[blockStart])+1)*4
	binary.LittleEndian.PutUint32(file[headerEnd-4:headerEnd], crc32.ChecksumIEEE(file[blockStart:headerEnd-4]))
	return file
}

func TestFetchXZFromPeer(t *testing.T) {
	nar, err := os.ReadFile("testdata/hello.nar")
	if err != nil {
		t.Fatal(err)
	}

	m := newTestMesh(t, 2, meshOptions{})
	a, c := m.nodes[0], m.nodes[1]

	p := storePath("hello-xz")
	a.cache.putFile(p, nar, xzCompress(t, nar), "xz", a.cache.key)

	from, err := c.Fetch(context.Background(), p, c.cache, a.ID())
	if err != nil || from != a.ID() {
		t.Fatalf("Fetch(%s, xz on A) = %s, %v, want A", p, from, err)
	}
	if got, ok := c.cache.file(p); !ok || !bytes.Equal(got, nar) {
		t.Errorf("C's NAR of %s = %d bytes, %v, want the %d bytes of hello.nar", p, len(got), ok, len(nar))
	}
	if n := c.Stats().BlockedPeers; n != 0 {
		t.Errorf("C's BlockedPeers = %d, want 0", n)
	}
}

func TestFetchRejectsHugeXZDictionary(t *testing.T) {
	nar, err := os.ReadFile("testdata/hello.nar")
	if err != nil {
		t.Fatal(err)
	}

	m := newTestMesh(t, 2, meshOptions{})
	bad, c := m.nodes[0], m.nodes[1]

	p := storePath("hello-xz-bomb")
	bad.cache.putFile(p, nar, xzHugeDictionary(t, nar), "xz", bad.cache.key)

	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	_, err = c.Fetch(context.Background(), p, c.cache, bad.ID())

	runtime.ReadMemStats(&after)

	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch(%s, xz with a 2 GiB dictionary) = %v, want ErrNotFound", p, err)
	}
	if _, ok := c.cache.file(p); ok {
		t.Errorf("C stored %s, want nothing stored", p)
	}
	if n := c.Stats().BlockedPeers; n != 1 {
		t.Errorf("C's BlockedPeers = %d, want 1", n)
	}

	// The libp2p hosts allocate too while the fetch runs, so the bound
	// is far above their share and far below the 2 GiB dictionary.
	const maxAllocated = 256 << 20
	if allocated := after.TotalAlloc - before.TotalAlloc; allocated > maxAllocated {
		t.Errorf("Fetch(%s, xz with a 2 GiB dictionary) allocated %d bytes, want at most %d", p, allocated, maxAllocated)
	}
}
