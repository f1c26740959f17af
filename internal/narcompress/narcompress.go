// Package narcompress decompresses the NAR files of a binary cache with
// bounded memory, because the cache and the mesh read them from clients,
// upstream caches and peers that may be hostile.
//
// NewReader handles the Compression values "none", "bzip2", "xz" and
// "zstd" of a narinfo. Every decoder it returns allocates at most
// MaxWindow bytes for its window or dictionary: zstd through the
// decoder's own limits, and xz through a check of each block header
// before the decoder reads it.
package narcompress

import (
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// MaxWindow bounds the memory that one NAR file may make a decoder
// allocate for its window or dictionary: 64 MiB, the dictionary of
// "xz -9", the largest xz preset.
//
// NOTE: zstd's ultra levels and long-distance mode can use larger
// windows, and files compressed that way are rejected.
const MaxWindow = 64 << 20

// ErrWindowTooLarge is wrapped when a compressed file needs a larger
// window or dictionary than the limit.
var ErrWindowTooLarge = errors.New("compression window too large")

// ErrUnsupported is wrapped by NewReader for a Compression value it does
// not decompress.
var ErrUnsupported = errors.New("unsupported compression")

// NewReader returns a reader of the NAR inside file, which is compressed
// with compression: "none", "bzip2", "xz" or "zstd". The caller closes
// the reader, which does not close file.
//
// For xz, the reader checks each block header with CheckXZ's rules before
// the decoder reads it, and its Read returns an error wrapping
// ErrWindowTooLarge for a dictionary over MaxWindow. NewReader itself
// reads the xz stream header from file.
func NewReader(compression string, file io.Reader) (io.ReadCloser, error) {
	switch compression {
	case "none":
		return io.NopCloser(file), nil
	case "zstd":
		dec, err := zstd.NewReader(file,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(MaxWindow),
			zstd.WithDecoderMaxMemory(MaxWindow))
		if err != nil {
			return nil, err
		}

		return zstdReadCloser{dec}, nil
	case "bzip2":
		// bzip2 blocks are at most 900 kB, so the decoder's memory is
		// bounded.
		return io.NopCloser(bzip2.NewReader(file)), nil
	case "xz":
		dec, err := xz.NewReader(newXZChecker(file, MaxWindow))
		if err != nil {
			return nil, err
		}

		return io.NopCloser(dec), nil
	default:
		return nil, fmt.Errorf("%w %q", ErrUnsupported, compression)
	}
}

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error {
	z.Decoder.Close()
	return nil
}
