// Package wire encodes and decodes what mesh peers send each other: the
// request and response headers of the NAR stream protocol, build
// announcements, and the DHT key of a store path.
//
// Every decoder reads peer input, which is untrusted: it bounds what it
// reads and rejects a malformed value with an error that names the field.
package wire

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/ipfs/go-cid"
	"github.com/multiformats/go-multihash"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

const (
	// NARProtocol is the libp2p protocol ID of the stream protocol that
	// serves a narinfo and its NAR file.
	NARProtocol = "/gradient/nar/1"

	// MaxLineSize bounds a request or response header line in bytes,
	// newline included.
	MaxLineSize = 512
)

// ErrMalformed is wrapped by every error about peer input that does not
// follow the protocol.
var ErrMalformed = errors.New("malformed message")

// keyPrefix separates the DHT keys of store paths from any other use of
// SHA-256 over a hash part.
const keyPrefix = "/gradient/store-path/"

// PathKey returns the CID under which nodes announce and find providers of
// the store path with the given hash part: a raw CIDv1 whose multihash is
// the SHA-256 of "/gradient/store-path/<hash part>". It panics when
// hashPart is not a 32-character nix32 string.
func PathKey(hashPart string) cid.Cid {
	if !narinfo.IsHashPart(hashPart) {
		panic(fmt.Sprintf("wire.PathKey: invalid hash part %q", hashPart))
	}

	sum, err := multihash.Sum([]byte(keyPrefix+hashPart), multihash.SHA2_256, -1)
	if err != nil {
		panic(err)
	}

	return cid.NewCidV1(cid.Raw, sum)
}

// Request is a request to a peer for the narinfo and the NAR file of one store path.
type Request struct {
	// HashPart is the 32-character nix32 hash of the store path.
	HashPart string
}

// WriteRequest writes req as the line "GET <hash part>\n".
func WriteRequest(w io.Writer, req Request) error {
	if !narinfo.IsHashPart(req.HashPart) {
		return fmt.Errorf("write request: invalid hash part %q", req.HashPart)
	}

	_, err := io.WriteString(w, "GET "+req.HashPart+"\n")

	return err
}

// ReadRequest reads a request line of at most MaxLineSize bytes.
func ReadRequest(r *bufio.Reader) (Request, error) {
	line, err := readLine(r)
	if err != nil {
		return Request{}, fmt.Errorf("read request: %w", err)
	}

	verb, hashPart, ok := strings.Cut(line, " ")
	if !ok || verb != "GET" {
		return Request{}, fmt.Errorf("read request: %w: %q is not \"GET <hash part>\"", ErrMalformed, line)
	}

	if !narinfo.IsHashPart(hashPart) {
		return Request{}, fmt.Errorf("read request: %w: invalid hash part %q", ErrMalformed, hashPart)
	}

	return Request{HashPart: hashPart}, nil
}

// Status is the first word of a response header.
type Status string

const (
	// StatusOK precedes a narinfo and a NAR file.
	StatusOK Status = "OK"
	// StatusNotFound means the peer does not hold the path.
	StatusNotFound Status = "NOT_FOUND"
	// StatusError means the peer failed to serve the path, for the
	// reason in the message.
	StatusError Status = "ERROR"
)

// Response is the header a peer sends back. For StatusOK it is followed
// by NarInfoSize bytes of .narinfo text and FileSize bytes of the NAR
// file, compressed with the method in the narinfo's Compression field.
type Response struct {
	Status Status
	// NarInfoSize and FileSize are set for StatusOK.
	NarInfoSize int64
	FileSize    int64
	// Message explains StatusError, at most 256 bytes of printable text.
	Message string
}

const maxMessageSize = 256

// WriteResponse writes resp as one header line: "OK <narinfo size> <file
// size>", "NOT_FOUND" or "ERROR <message>". A message is shortened to 256
// bytes and its control characters replaced.
func WriteResponse(w io.Writer, resp Response) error {
	var line string

	switch resp.Status {
	case StatusOK:
		if resp.NarInfoSize <= 0 || resp.FileSize <= 0 {
			return fmt.Errorf("write response: sizes %d and %d must be positive", resp.NarInfoSize, resp.FileSize)
		}
		line = fmt.Sprintf("OK %d %d", resp.NarInfoSize, resp.FileSize)
	case StatusNotFound:
		line = "NOT_FOUND"
	case StatusError:
		line = "ERROR " + cleanMessage(resp.Message)
	default:
		return fmt.Errorf("write response: unknown status %q", resp.Status)
	}

	_, err := io.WriteString(w, line+"\n")

	return err
}

func cleanMessage(s string) string {
	if len(s) > maxMessageSize {
		s = s[:maxMessageSize]
	}

	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '\uFFFD' {
			return '?'
		}
		return r
	}, s)
}

// ReadResponse reads a response header line of at most MaxLineSize bytes
// and checks that sizes are positive and at most maxNarInfoSize and
// maxFileSize.
func ReadResponse(r *bufio.Reader, maxNarInfoSize, maxFileSize int64) (Response, error) {
	line, err := readLine(r)
	if err != nil {
		return Response{}, fmt.Errorf("read response: %w", err)
	}

	word, rest, _ := strings.Cut(line, " ")

	switch Status(word) {
	case StatusNotFound:
		if rest != "" {
			return Response{}, fmt.Errorf("read response: %w: text after NOT_FOUND", ErrMalformed)
		}
		return Response{Status: StatusNotFound}, nil
	case StatusError:
		if len(rest) > maxMessageSize {
			return Response{}, fmt.Errorf("read response: %w: error message longer than %d bytes", ErrMalformed, maxMessageSize)
		}
		return Response{Status: StatusError, Message: cleanMessage(rest)}, nil
	case StatusOK:
	default:
		return Response{}, fmt.Errorf("read response: %w: unknown status %q", ErrMalformed, word)
	}

	sizes := strings.Split(rest, " ")
	if len(sizes) != 2 {
		return Response{}, fmt.Errorf("read response: %w: %q is not \"OK <narinfo size> <file size>\"", ErrMalformed, line)
	}

	narInfoSize, err := parseSize("narinfo size", sizes[0], maxNarInfoSize)
	if err != nil {
		return Response{}, err
	}

	fileSize, err := parseSize("file size", sizes[1], maxFileSize)
	if err != nil {
		return Response{}, err
	}

	return Response{Status: StatusOK, NarInfoSize: narInfoSize, FileSize: fileSize}, nil
}

func parseSize(field, s string, limit int64) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 || strconv.FormatInt(n, 10) != s {
		return 0, fmt.Errorf("read response: %w: %s %q is not a positive decimal number", ErrMalformed, field, s)
	}

	if n > limit {
		return 0, fmt.Errorf("read response: %w: %s %d exceeds the limit of %d bytes", ErrMalformed, field, n, limit)
	}

	return n, nil
}

// readLine reads one line ending in "\n" of at most MaxLineSize bytes and
// returns it without the newline.
func readLine(r *bufio.Reader) (string, error) {
	var line []byte

	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)

		if len(line) > MaxLineSize {
			return "", fmt.Errorf("%w: line longer than %d bytes", ErrMalformed, MaxLineSize)
		}

		switch {
		case err == nil:
			return string(line[:len(line)-1]), nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(line) > 0:
			return "", fmt.Errorf("%w: line without newline", ErrMalformed)
		default:
			return "", err
		}
	}
}
