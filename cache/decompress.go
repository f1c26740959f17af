package cache

import (
	"bufio"
	"bytes"
	"compress/bzip2"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// maxDecoderWindow bounds the memory one upload may make a decompressor
// allocate for its window or dictionary: 64 MiB, the dictionary of
// "xz -9", the largest xz preset.
//
// NOTE: zstd's ultra levels and long-distance mode can use larger
// windows, and uploads compressed that way are rejected.
const maxDecoderWindow = 64 << 20

// errDecoderLimit is wrapped when a compressed upload needs a larger
// window or dictionary than maxDecoderWindow.
var errDecoderLimit = errors.New("compression window too large")

// newDecompressor returns a reader of the NAR inside a file compressed
// with compression: "none", "bzip2", "xz" or "zstd". For xz the caller must first
// check the file with checkXZDictionaries.
func newDecompressor(compression string, file io.Reader) (io.ReadCloser, error) {
	switch compression {
	case "none":
		return io.NopCloser(file), nil
	case "zstd":
		dec, err := zstd.NewReader(file,
			zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxWindow(maxDecoderWindow),
			zstd.WithDecoderMaxMemory(maxDecoderWindow))
		if err != nil {
			return nil, err
		}

		return zstdReadCloser{dec}, nil
	case "bzip2":
		// bzip2 blocks are at most 900 kB, so the decoder's memory is
		// bounded.
		return io.NopCloser(bzip2.NewReader(file)), nil
	case "xz":
		dec, err := xz.NewReader(file)
		if err != nil {
			return nil, err
		}

		return io.NopCloser(dec), nil
	default:
		return nil, fmt.Errorf("unsupported compression %q", compression)
	}
}

type zstdReadCloser struct{ *zstd.Decoder }

func (z zstdReadCloser) Close() error {
	z.Decoder.Close()
	return nil
}

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// checkXZDictionaries walks the container structure of an .xz file and
// checks that every block uses only the LZMA2 filter with a dictionary of
// at most maxDict bytes. github.com/ulikunitz/xz allocates the dictionary
// size a block header names, up to 4 GiB, so this walk runs first. It reads the headers and skips the compressed data using the
// sizes in the LZMA2 chunk headers. Checksums are left to the decoder.
func checkXZDictionaries(r io.Reader, maxDict int64) error {
	br := bufio.NewReader(r)

	for streams := 0; ; streams++ {
		// Streams may be followed by zero padding and further streams.
		if streams > 0 {
			more, err := skipStreamPadding(br)
			if err != nil || !more {
				return err
			}
		}

		if err := checkXZStream(br, maxDict); err != nil {
			return fmt.Errorf("xz stream %d: %w", streams+1, err)
		}
	}
}

func skipStreamPadding(br *bufio.Reader) (more bool, err error) {
	for {
		b, err := br.Peek(4)
		if len(b) == 0 && errors.Is(err, io.EOF) {
			return false, nil
		}

		if err != nil {
			return false, fmt.Errorf("xz stream padding: %w", io.ErrUnexpectedEOF)
		}

		if !bytes.Equal(b, []byte{0, 0, 0, 0}) {
			return true, nil
		}

		br.Discard(4)
	}
}

func checkXZStream(br *bufio.Reader, maxDict int64) error {
	header := make([]byte, 12)
	if _, err := io.ReadFull(br, header); err != nil {
		return fmt.Errorf("read header: %w", err)
	}

	if !bytes.Equal(header[:6], xzMagic) {
		return errors.New("not an xz file")
	}

	checkSize, err := xzCheckSize(header[7])
	if err != nil {
		return err
	}

	for {
		sizeByte, err := br.ReadByte()
		if err != nil {
			return fmt.Errorf("read block header: %w", err)
		}

		// A zero byte in place of a block header starts the index.
		if sizeByte == 0 {
			return skipXZIndex(br)
		}

		headerSize := (int(sizeByte) + 1) * 4

		blockHeader := make([]byte, headerSize)
		blockHeader[0] = sizeByte

		if _, err := io.ReadFull(br, blockHeader[1:]); err != nil {
			return fmt.Errorf("read block header: %w", err)
		}

		if err := checkXZBlockHeader(blockHeader, maxDict); err != nil {
			return err
		}

		packed, err := skipLZMA2Chunks(br)
		if err != nil {
			return err
		}

		// Block padding aligns header plus compressed data to 4 bytes.
		padding := (4 - (int64(headerSize)+packed)%4) % 4
		if _, err := br.Discard(int(padding) + checkSize); err != nil {
			return fmt.Errorf("read block padding: %w", err)
		}
	}
}

// xzCheckSize returns the size of a block's check field for the check
// type in the low 4 bits of the second stream flags byte.
func xzCheckSize(flags byte) (int, error) {
	if flags&0xf0 != 0 {
		return 0, errors.New("reserved stream flags set")
	}

	checkType := int(flags & 0x0f)
	if checkType == 0 {
		return 0, nil
	}

	// Check types 1-3 use 4 bytes, 4-6 use 8, 7-9 use 16, and so on.
	return 4 << ((checkType - 1) / 3), nil
}

func checkXZBlockHeader(h []byte, maxDict int64) error {
	flags := h[1]
	if flags&0x3c != 0 {
		return errors.New("reserved block flags set")
	}

	rest := bytes.NewReader(h[2:])

	// Optional compressed and uncompressed sizes.
	for _, present := range []bool{flags&0x40 != 0, flags&0x80 != 0} {
		if present {
			if _, err := readXZVarint(rest); err != nil {
				return fmt.Errorf("block header size field: %w", err)
			}
		}
	}

	filters := int(flags&0x03) + 1
	if filters != 1 {
		return fmt.Errorf("%d filters in a block, only LZMA2 alone is supported", filters)
	}

	id, err := readXZVarint(rest)
	if err != nil {
		return fmt.Errorf("block filter id: %w", err)
	}

	propsSize, err := readXZVarint(rest)
	if err != nil {
		return fmt.Errorf("block filter properties: %w", err)
	}

	const lzma2FilterID = 0x21
	if id != lzma2FilterID || propsSize != 1 {
		return fmt.Errorf("filter %#x with %d property bytes, only LZMA2 is supported", id, propsSize)
	}

	dictByte, err := rest.ReadByte()
	if err != nil {
		return fmt.Errorf("block filter properties: %w", err)
	}

	if dictByte > 40 {
		return fmt.Errorf("invalid LZMA2 dictionary size byte %d", dictByte)
	}

	// LZMA2 encodes the dictionary size as 2 or 3 times a power of two,
	// and 40 as 4 GiB - 1.
	dictSize := int64(2|dictByte&1) << (dictByte/2 + 11)
	if dictByte == 40 {
		dictSize = 1<<32 - 1
	}

	if dictSize > maxDict {
		return fmt.Errorf("%w: xz dictionary of %d bytes, the limit is %d", errDecoderLimit, dictSize, maxDict)
	}

	return nil
}

// skipLZMA2Chunks skips the LZMA2 data of one block and returns its
// length in bytes, including the end marker.
func skipLZMA2Chunks(br *bufio.Reader) (int64, error) {
	var total int64

	for {
		control, err := br.ReadByte()
		if err != nil {
			return 0, fmt.Errorf("read LZMA2 chunk: %w", err)
		}

		total++

		var skip int

		switch {
		case control == 0x00:
			return total, nil
		case control == 0x01 || control == 0x02:
			size, err := readBigEndian16(br)
			if err != nil {
				return 0, err
			}

			total += 2
			skip = size + 1
		case control >= 0x80:
			// Two bytes of unpacked size, two of packed size, and a
			// properties byte when the control byte resets the state.
			var fields [4]byte
			if _, err := io.ReadFull(br, fields[:]); err != nil {
				return 0, fmt.Errorf("read LZMA2 chunk: %w", err)
			}

			total += 4
			skip = (int(fields[2])<<8 | int(fields[3])) + 1

			if (control>>5)&0x03 >= 2 {
				skip++
			}
		default:
			return 0, fmt.Errorf("invalid LZMA2 control byte %#x", control)
		}

		if _, err := br.Discard(skip); err != nil {
			return 0, fmt.Errorf("read LZMA2 chunk: %w", io.ErrUnexpectedEOF)
		}

		total += int64(skip)
	}
}

// skipXZIndex skips an index, whose indicator byte was read, and the
// stream footer after it.
func skipXZIndex(br *bufio.Reader) error {
	size := int64(1)

	records, err := readXZVarint(br)
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}

	size += varintLen(records)

	for i := uint64(0); i < records; i++ {
		for range 2 {
			v, err := readXZVarint(br)
			if err != nil {
				return fmt.Errorf("read index: %w", err)
			}

			size += varintLen(v)
		}
	}

	padding := (4 - size%4) % 4
	const crcSize, footerSize = 4, 12

	if _, err := br.Discard(int(padding) + crcSize + footerSize); err != nil {
		return fmt.Errorf("read index: %w", io.ErrUnexpectedEOF)
	}

	return nil
}

func readXZVarint(r io.ByteReader) (uint64, error) {
	var v uint64

	for i := 0; i < 9; i++ {
		b, err := r.ReadByte()
		if err != nil {
			return 0, io.ErrUnexpectedEOF
		}

		v |= uint64(b&0x7f) << (7 * i)

		if b&0x80 == 0 {
			if i > 0 && b == 0 {
				return 0, errors.New("invalid multi-byte integer")
			}

			return v, nil
		}
	}

	return 0, errors.New("multi-byte integer longer than 9 bytes")
}

func varintLen(v uint64) int64 {
	n := int64(1)
	for v >= 0x80 {
		v >>= 7
		n++
	}

	return n
}

func readBigEndian16(br *bufio.Reader) (int, error) {
	var b [2]byte
	if _, err := io.ReadFull(br, b[:]); err != nil {
		return 0, fmt.Errorf("read LZMA2 chunk: %w", io.ErrUnexpectedEOF)
	}

	return int(b[0])<<8 | int(b[1]), nil
}
