package cache

import (
	"io"

	"github.com/gradient-ci/gradient/internal/narcompress"
)

// maxDecoderWindow bounds the memory one NAR file may make a decompressor
// allocate for its window or dictionary, see narcompress.MaxWindow.
const maxDecoderWindow = narcompress.MaxWindow

// newDecompressor returns a reader of the NAR inside a file compressed
// with compression: "none", "bzip2", "xz" or "zstd". It checks xz block
// headers as it reads, see narcompress.NewReader.
func newDecompressor(compression string, file io.Reader) (io.ReadCloser, error) {
	return narcompress.NewReader(compression, file)
}

// checkXZDictionaries reads an .xz file to its end and checks that every
// block uses only LZMA2 with a dictionary of at most maxDict bytes, see
// narcompress.CheckXZ. An upload is checked with it before it is
// decoded, so the client gets the reason as a 400.
func checkXZDictionaries(r io.Reader, maxDict int64) error {
	return narcompress.CheckXZ(r, maxDict)
}
