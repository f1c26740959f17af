package cache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
)

// The checker below is written for the cache instead of wrapping go-nix's
// nar.Reader. As of v0.0.0-20250101154619 that reader accepts a node
// without a type ("( type )"), the names "", "." and "..", duplicate
// names and data after the archive. It also skips unknown tokens inside
// a directory and runs a goroutine per archive.

const (
	// narMagic starts every NAR archive.
	narMagic = "nix-archive-1"
	// narMaxTokenLen bounds the keywords of the format, the longest of
	// which is narMagic.
	narMaxTokenLen = 16
	// narMaxNameLen is NAME_MAX on Linux, the longest file name.
	narMaxNameLen = 255
	// narMaxTargetLen is PATH_MAX on Linux without the NUL byte, the
	// longest symlink target.
	narMaxTargetLen = 4095
	// narMaxDepth bounds directory nesting, which the checker follows by
	// recursion. Below 2048 levels every path has at least 4096 bytes,
	// longer than PATH_MAX, so Linux programs cannot open it by name.
	narMaxDepth = 2048
	// narBufferSize is the read buffer of the checker.
	narBufferSize = 64 << 10
)

// checkNARStream reads r to its end and checks that the bytes are one NAR
// archive in the canonical form that nix writes. That is the magic string
// and one regular file, symlink or directory, with valid names, directory
// entries sorted by name without duplicates, zero padding, and nothing
// after the archive. It keeps at most narMaxDepth names in memory and
// streams file contents.
//
// It returns formatErr, wrapping ErrInvalidNAR, when the bytes are not
// such an archive, and err when reading r fails. Unless err is set it
// reads r to EOF, so hashes computed from r cover every byte.
func checkNARStream(r io.Reader) (formatErr, err error) {
	return walkNARStream(r, nil)
}

// narNode is one file, symlink or directory of a NAR archive, as
// walkNARStream reports it.
type narNode struct {
	// Path is the node's path from the root, "/" for the root itself.
	Path string
	// Type is "regular", "symlink" or "directory".
	Type string
	// Size is the length of a regular file's contents in bytes.
	Size int64
	// Offset is the byte offset of a regular file's contents in the
	// uncompressed archive.
	Offset     int64
	Executable bool
	// Target is a symlink's target.
	Target string
}

// walkNARStream checks r like checkNARStream and calls visit, unless it is
// nil, for each node in archive order: a directory before its entries,
// and a regular file before its contents are read. An error from visit
// stops the walk and is returned as err.
func walkNARStream(r io.Reader, visit func(narNode) error) (formatErr, err error) {
	c := &narChecker{r: bufio.NewReaderSize(r, narBufferSize), visit: visit}

	formatErr = c.checkArchive()
	if formatErr != nil && !errors.Is(formatErr, ErrInvalidNAR) {
		return nil, formatErr
	}

	rest, err := io.Copy(io.Discard, c.r)
	if err != nil {
		return nil, err
	}

	if formatErr == nil && rest > 0 {
		formatErr = fmt.Errorf("%w: %d bytes after the end of the archive at byte %d", ErrInvalidNAR, rest, c.offset)
	}

	return formatErr, nil
}

// narChecker parses a NAR archive from r. Its methods return errors
// wrapping ErrInvalidNAR for a format problem and r's error otherwise.
type narChecker struct {
	r *bufio.Reader
	// offset is the number of bytes read from r.
	offset int64
	// names is the path from the root to the current node.
	names []string
	word  [8]byte
	// visit, unless nil, receives each node.
	visit func(narNode) error
}

// report passes node to visit, with the current path.
func (c *narChecker) report(node narNode) error {
	if c.visit == nil {
		return nil
	}

	node.Path = "/" + strings.Join(c.names, "/")

	return c.visit(node)
}

// invalid returns an error wrapping ErrInvalidNAR that names the current
// node and byte offset.
func (c *narChecker) invalid(format string, args ...any) error {
	return fmt.Errorf("%w: at byte %d in %q: %s", ErrInvalidNAR, c.offset, "/"+strings.Join(c.names, "/"), fmt.Sprintf(format, args...))
}

// readError turns an end of input into a format error.
func (c *narChecker) readError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return c.invalid("the archive ends early")
	}

	return err
}

func (c *narChecker) readFull(p []byte) error {
	n, err := io.ReadFull(c.r, p)
	c.offset += int64(n)

	if err != nil {
		return c.readError(err)
	}

	return nil
}

func (c *narChecker) readUint64() (uint64, error) {
	if err := c.readFull(c.word[:]); err != nil {
		return 0, err
	}

	return binary.LittleEndian.Uint64(c.word[:]), nil
}

// readPadding reads the zero bytes that pad a field of n bytes to a
// multiple of 8.
func (c *narChecker) readPadding(n uint64) error {
	pad := (8 - n%8) % 8
	if pad == 0 {
		return nil
	}

	if err := c.readFull(c.word[:pad]); err != nil {
		return err
	}

	for _, b := range c.word[:pad] {
		if b != 0 {
			return c.invalid("non-zero padding byte 0x%02x", b)
		}
	}

	return nil
}

// readString reads a length-prefixed string of at most maxLen bytes.
func (c *narChecker) readString(field string, maxLen int) (string, error) {
	n, err := c.readUint64()
	if err != nil {
		return "", err
	}

	if n > uint64(maxLen) {
		return "", c.invalid("%s of %d bytes, longer than the limit of %d", field, n, maxLen)
	}

	buf := make([]byte, n)
	if err := c.readFull(buf); err != nil {
		return "", err
	}

	if err := c.readPadding(n); err != nil {
		return "", err
	}

	return string(buf), nil
}

func (c *narChecker) readToken() (string, error) {
	return c.readString("keyword", narMaxTokenLen)
}

// expect reads a keyword and checks that it is want.
func (c *narChecker) expect(want string) error {
	got, err := c.readToken()
	if err != nil {
		return err
	}

	if got != want {
		return c.invalid("expected %q, found %q", want, got)
	}

	return nil
}

func (c *narChecker) checkArchive() error {
	magic, err := c.readString("magic string", narMaxTokenLen)
	if err != nil {
		return err
	}

	if magic != narMagic {
		return c.invalid("expected the magic string %q, found %q", narMagic, magic)
	}

	return c.checkNode()
}

// checkNode checks one node: "(" "type", the type and its fields, and
// ")".
func (c *narChecker) checkNode() error {
	if err := c.expect("("); err != nil {
		return err
	}

	if err := c.expect("type"); err != nil {
		return err
	}

	nodeType, err := c.readToken()
	if err != nil {
		return err
	}

	switch nodeType {
	case "regular":
		return c.checkRegular()
	case "symlink":
		return c.checkSymlink()
	case "directory":
		return c.checkDirectory()
	default:
		return c.invalid("unknown node type %q, expected regular, symlink or directory", nodeType)
	}
}

// checkRegular checks the rest of a regular file: an optional
// "executable" "", then "contents" with the file's bytes, and ")".
func (c *narChecker) checkRegular() error {
	field, err := c.readToken()
	if err != nil {
		return err
	}

	executable := field == "executable"
	if executable {
		value, err := c.readString("executable marker", narMaxTokenLen)
		if err != nil {
			return err
		}

		if value != "" {
			return c.invalid("executable marker has the value %q, expected an empty string", value)
		}

		if field, err = c.readToken(); err != nil {
			return err
		}
	}

	if field != "contents" {
		return c.invalid("expected \"contents\", found %q", field)
	}

	size, err := c.readUint64()
	if err != nil {
		return err
	}

	if size > math.MaxInt64 {
		return c.invalid("file size %d is larger than the maximum of %d", size, int64(math.MaxInt64))
	}

	if err := c.report(narNode{Type: "regular", Size: int64(size), Offset: c.offset, Executable: executable}); err != nil {
		return err
	}

	for remaining := int64(size); remaining > 0; {
		chunk := min(remaining, 1<<30)

		n, err := c.r.Discard(int(chunk))
		c.offset += int64(n)
		remaining -= int64(n)

		if err != nil {
			return c.readError(err)
		}
	}

	if err := c.readPadding(size); err != nil {
		return err
	}

	return c.expect(")")
}

// checkSymlink checks the rest of a symlink: "target", the target and
// ")".
func (c *narChecker) checkSymlink() error {
	if err := c.expect("target"); err != nil {
		return err
	}

	target, err := c.readString("symlink target", narMaxTargetLen)
	if err != nil {
		return err
	}

	// Linux creates neither a symlink with an empty target nor one with
	// a NUL byte, so such an archive cannot be unpacked.
	if target == "" || strings.ContainsRune(target, 0) {
		return c.invalid("invalid symlink target %q", target)
	}

	if err := c.report(narNode{Type: "symlink", Target: target}); err != nil {
		return err
	}

	return c.expect(")")
}

// checkDirectory checks the rest of a directory: its entries, each
// "entry" "(" "name" <name> "node" <node> ")", and ")".
func (c *narChecker) checkDirectory() error {
	if len(c.names) >= narMaxDepth {
		return c.invalid("directories nested deeper than %d levels", narMaxDepth)
	}

	if err := c.report(narNode{Type: "directory"}); err != nil {
		return err
	}

	previous := ""

	for first := true; ; first = false {
		token, err := c.readToken()
		if err != nil {
			return err
		}

		if token == ")" {
			return nil
		}

		if token != "entry" {
			return c.invalid("expected \"entry\" or \")\", found %q", token)
		}

		if err := c.expect("("); err != nil {
			return err
		}

		if err := c.expect("name"); err != nil {
			return err
		}

		name, err := c.readString("file name", narMaxNameLen)
		if err != nil {
			return err
		}

		if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
			return c.invalid("invalid file name %q", name)
		}

		if !first && name <= previous {
			return c.invalid("entry %q follows %q, but entries must be sorted by name without duplicates", name, previous)
		}

		previous = name

		if err := c.expect("node"); err != nil {
			return err
		}

		c.names = append(c.names, name)

		if err := c.checkNode(); err != nil {
			return err
		}

		c.names = c.names[:len(c.names)-1]

		if err := c.expect(")"); err != nil {
			return err
		}
	}
}
