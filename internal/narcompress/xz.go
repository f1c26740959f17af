package narcompress

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}

// CheckXZ reads an .xz file to its end and checks that every block uses
// only the LZMA2 filter with a dictionary of at most maxDict bytes, and
// that nothing but stream padding and further streams follows the first
// stream. It returns an error wrapping ErrWindowTooLarge for a larger
// dictionary. github.com/ulikunitz/xz allocates the dictionary size that
// a block header names, up to 4 GiB, so this check runs first. The
// compressed data is skipped using the sizes in the LZMA2 chunk headers,
// and checksums are left to the decoder.
func CheckXZ(r io.Reader, maxDict int64) error {
	_, err := io.Copy(io.Discard, newXZChecker(r, maxDict))
	return err
}

// xzChecker passes an .xz file through unchanged while it parses the
// container with CheckXZ's rules. It returns a block header to its
// reader only after the header passed the check, so a decoder that reads
// through it never reads a dictionary larger than maxDict. A failed check
// ends the stream with the error.
type xzChecker struct {
	src     *bufio.Reader
	maxDict int64

	// pending are the checked bytes not yet returned.
	pending []byte
	// pass is the number of bytes returned without parsing: LZMA2 chunk
	// data, block padding and checks, and the end of an index.
	pass int64
	// next parses the next part of the container. It is nil after the
	// end of the file.
	next func() error
	err  error

	// stream is the number of the current stream, counted from 1.
	stream int
	// checkSize is the size of each block's check field in the stream.
	checkSize int
	// blockSize counts the header and LZMA2 bytes of the current block,
	// which its padding aligns to 4 bytes.
	blockSize int64
	// records counts the index records still to read, and indexSize the
	// bytes of the index so far.
	records   uint64
	indexSize int64
}

func newXZChecker(r io.Reader, maxDict int64) *xzChecker {
	x := &xzChecker{src: bufio.NewReader(r), maxDict: maxDict}
	x.next = x.readStreamHeader

	return x
}

func (x *xzChecker) Read(p []byte) (int, error) {
	for {
		switch {
		case len(p) == 0:
			return 0, nil
		case len(x.pending) > 0:
			n := copy(p, x.pending)
			x.pending = x.pending[n:]

			return n, nil
		case x.pass > 0:
			n, err := x.src.Read(p[:min(int64(len(p)), x.pass)])
			x.pass -= int64(n)

			if err != nil {
				x.fail(unexpectedEOF(err))
			}

			return n, x.err
		case x.err != nil:
			return 0, x.err
		case x.next == nil:
			return 0, io.EOF
		}

		if err := x.next(); err != nil {
			// The bytes of the part that failed are never returned.
			x.pending = nil
			x.fail(err)
		}
	}
}

// fail ends the stream with err.
func (x *xzChecker) fail(err error) {
	x.err = fmt.Errorf("xz stream %d: %w", x.stream, err)
}

// unexpectedEOF returns io.ErrUnexpectedEOF for io.EOF, because the file
// may end only after a stream or its padding.
func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}

	return err
}

// take reads the next n bytes of the file and keeps them for the reader.
func (x *xzChecker) take(n int) ([]byte, error) {
	start := len(x.pending)
	x.pending = append(x.pending, make([]byte, n)...)

	if _, err := io.ReadFull(x.src, x.pending[start:]); err != nil {
		return nil, unexpectedEOF(err)
	}

	return x.pending[start:], nil
}

func (x *xzChecker) takeByte() (byte, error) {
	b, err := x.take(1)
	if err != nil {
		return 0, err
	}

	return b[0], nil
}

// takeVarint reads a multi-byte integer and returns it with its length.
func (x *xzChecker) takeVarint() (uint64, int64, error) {
	start := len(x.pending)

	v, err := readXZVarint(byteTaker{x})
	if err != nil {
		return 0, 0, err
	}

	return v, int64(len(x.pending) - start), nil
}

type byteTaker struct{ x *xzChecker }

func (b byteTaker) ReadByte() (byte, error) { return b.x.takeByte() }

func (x *xzChecker) readStreamHeader() error {
	x.stream++

	header, err := x.take(12)
	if err != nil {
		return fmt.Errorf("read header: %w", err)
	}

	if !bytes.Equal(header[:6], xzMagic) {
		return errors.New("not an xz file")
	}

	x.checkSize, err = xzCheckSize(header[7])
	if err != nil {
		return err
	}

	x.next = x.readBlockHeader

	return nil
}

func (x *xzChecker) readBlockHeader() error {
	sizeByte, err := x.takeByte()
	if err != nil {
		return fmt.Errorf("read block header: %w", err)
	}

	// A zero byte in place of a block header starts the index.
	if sizeByte == 0 {
		x.indexSize = 1
		x.next = x.readIndexCount

		return nil
	}

	headerSize := (int(sizeByte) + 1) * 4

	rest, err := x.take(headerSize - 1)
	if err != nil {
		return fmt.Errorf("read block header: %w", err)
	}

	if err := checkXZBlockHeader(append([]byte{sizeByte}, rest...), x.maxDict); err != nil {
		return err
	}

	x.blockSize = int64(headerSize)
	x.next = x.readChunkHeader

	return nil
}

// readChunkHeader reads the header of an LZMA2 chunk and passes its data
// on, or ends the block at the end marker.
func (x *xzChecker) readChunkHeader() error {
	control, err := x.takeByte()
	if err != nil {
		return fmt.Errorf("read LZMA2 chunk: %w", err)
	}

	x.blockSize++

	var skip int

	switch {
	case control == 0x00:
		// Block padding aligns header plus compressed data to 4 bytes.
		padding := (4 - x.blockSize%4) % 4
		x.pass = padding + int64(x.checkSize)
		x.next = x.readBlockHeader

		return nil
	case control == 0x01 || control == 0x02:
		size, err := x.take(2)
		if err != nil {
			return fmt.Errorf("read LZMA2 chunk: %w", err)
		}

		x.blockSize += 2
		skip = (int(size[0])<<8 | int(size[1])) + 1
	case control >= 0x80:
		// Two bytes of unpacked size, two of packed size, and a
		// properties byte when the control byte resets the state.
		fields, err := x.take(4)
		if err != nil {
			return fmt.Errorf("read LZMA2 chunk: %w", err)
		}

		x.blockSize += 4
		skip = (int(fields[2])<<8 | int(fields[3])) + 1

		if (control>>5)&0x03 >= 2 {
			skip++
		}
	default:
		return fmt.Errorf("invalid LZMA2 control byte %#x", control)
	}

	x.pass = int64(skip)
	x.blockSize += int64(skip)

	return nil
}

// readIndexCount reads the number of records of an index, whose indicator
// byte was read.
func (x *xzChecker) readIndexCount() error {
	records, n, err := x.takeVarint()
	if err != nil {
		return fmt.Errorf("read index: %w", err)
	}

	x.records = records
	x.indexSize += n
	x.next = x.readIndexRecord

	return nil
}

// readIndexRecord reads one index record per call, so the pending bytes stay
// few however many records the index claims, and after the last one
// passes on the index padding and CRC and the stream footer.
func (x *xzChecker) readIndexRecord() error {
	if x.records == 0 {
		const crcSize, footerSize = 4, 12

		padding := (4 - x.indexSize%4) % 4
		x.pass = padding + crcSize + footerSize
		x.next = x.readStreamPadding

		return nil
	}

	for range 2 {
		_, n, err := x.takeVarint()
		if err != nil {
			return fmt.Errorf("read index: %w", err)
		}

		x.indexSize += n
	}

	x.records--

	return nil
}

// readStreamPadding reads the end of the file, or the zero padding in
// groups of 4 bytes and the stream that may follow a stream.
func (x *xzChecker) readStreamPadding() error {
	b, err := x.src.Peek(4)
	if len(b) == 0 && errors.Is(err, io.EOF) {
		x.next = nil
		return nil
	}

	if err != nil {
		return fmt.Errorf("read stream padding: %w", unexpectedEOF(err))
	}

	if bytes.Equal(b, []byte{0, 0, 0, 0}) {
		x.pass = 4
		return nil
	}

	x.next = x.readStreamHeader

	return nil
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
		return fmt.Errorf("%w: xz dictionary of %d bytes, the limit is %d", ErrWindowTooLarge, dictSize, maxDict)
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
