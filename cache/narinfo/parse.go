// Package narinfo parses, formats, signs and verifies .narinfo files, the
// metadata that a Nix binary cache serves for each store path.
//
// It wraps go-nix's narinfo package and keeps its NarInfo type, but parses
// the way Nix does: unknown keys are ignored, values may contain ": ",
// input is bounded, and every error names the field it is about. Its
// fingerprint uses the store directory of the path instead of a fixed
// /nix/store.
package narinfo

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	gonarinfo "github.com/nix-community/go-nix/pkg/narinfo"
	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

const (
	// MaxSize is the largest .narinfo file Parse accepts, in bytes.
	MaxSize = 1 << 20

	// MaxLineSize is the longest line Parse accepts, in bytes. It fits a
	// References line of about 4000 store paths.
	MaxLineSize = 256 << 10

	// unknownDeriver is what Nix writes in the Deriver field when it does
	// not know the deriver.
	unknownDeriver = "unknown-deriver"
)

// NarInfo is a parsed .narinfo file. StorePath is absolute, while
// References and Deriver are base names without the store directory, as in
// the file. Compression is "bzip2" when the file does not name one.
type NarInfo = gonarinfo.NarInfo

// ErrTooLarge is wrapped by the error Parse returns for input longer than
// MaxSize or a line longer than MaxLineSize.
var ErrTooLarge = errors.New("narinfo too large")

// FieldError is the error for an invalid or missing field of a .narinfo
// file.
type FieldError struct {
	// Field is the key, such as "NarSize".
	Field string
	Err   error
}

func (e *FieldError) Error() string {
	return "narinfo field " + e.Field + ": " + e.Err.Error()
}

func (e *FieldError) Unwrap() error { return e.Err }

// Parse reads a .narinfo file of at most MaxSize bytes from r and checks
// it: StorePath, References and Deriver must be valid store paths,
// NarHash must be a SHA-256 hash, NarSize must be positive and URL must
// be present. Hashes may be written in nix32, base16 or base64, with an
// "<algo>:" prefix, or as SRI. Unknown keys and empty lines are ignored.
// A field other than References and Sig may appear only once. Errors
// about a field are *FieldError.
func Parse(r io.Reader) (*NarInfo, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read narinfo: %w", err)
	}

	if len(data) > MaxSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrTooLarge, MaxSize)
	}

	p := parser{info: &NarInfo{}, seen: map[string]bool{}}

	for i, line := range bytes.Split(data, []byte("\n")) {
		if len(line) > MaxLineSize {
			return nil, fmt.Errorf("%w: line %d is longer than %d bytes", ErrTooLarge, i+1, MaxLineSize)
		}

		if len(line) == 0 {
			continue
		}

		if err := p.parseLine(i+1, string(line)); err != nil {
			return nil, err
		}
	}

	if err := p.finish(); err != nil {
		return nil, err
	}

	return p.info, nil
}

type parser struct {
	info *NarInfo
	seen map[string]bool
}

// parseLine parses one "Key: value" line. Nix splits a line at its first
// colon and skips the space after it, so the value may contain ": ".
func (p *parser) parseLine(lineNumber int, line string) error {
	key, value, ok := strings.Cut(line, ":")
	if !ok {
		return fmt.Errorf("narinfo line %d: missing \":\" in %q", lineNumber, truncate(line))
	}

	if value != "" {
		if value[0] != ' ' {
			return fmt.Errorf("narinfo line %d: missing space after \":\" in %q", lineNumber, truncate(line))
		}

		value = value[1:]
	}

	if key != "References" && key != "Sig" {
		if p.seen[key] {
			return &FieldError{Field: key, Err: errors.New("appears more than once")}
		}

		p.seen[key] = true
	}

	if err := p.setField(key, value); err != nil {
		return &FieldError{Field: key, Err: err}
	}

	return nil
}

func (p *parser) setField(key, value string) error {
	var err error

	switch key {
	case "StorePath":
		_, _, err = SplitStorePath(value)
		p.info.StorePath = value
	case "URL":
		p.info.URL = value
	case "Compression":
		p.info.Compression = value
	case "FileHash":
		p.info.FileHash, err = ParseHash(value)
	case "FileSize":
		p.info.FileSize, err = parseSize(value)
	case "NarHash":
		p.info.NarHash, err = ParseHash(value)
		if err == nil && p.info.NarHash.Algo() != nixhash.SHA256 {
			err = fmt.Errorf("hash %q is not SHA-256", value)
		}
	case "NarSize":
		p.info.NarSize, err = parseSize(value)
	case "References":
		for _, ref := range strings.Fields(value) {
			if err := CheckBaseName(ref); err != nil {
				return err
			}

			p.info.References = append(p.info.References, ref)
		}
	case "Deriver":
		if value != unknownDeriver {
			err = checkDeriver(value)
			p.info.Deriver = value
		}
	case "System":
		p.info.System = value
	case "Sig":
		var sig signature.Signature

		sig, err = signature.ParseSignature(value)
		if err == nil {
			p.info.Signatures = append(p.info.Signatures, sig)
		}
	case "CA":
		p.info.CA = value
	}

	return err
}

// finish checks the required fields and fills in the default compression.
func (p *parser) finish() error {
	info := p.info

	switch {
	case info.StorePath == "":
		return &FieldError{Field: "StorePath", Err: errors.New("missing")}
	case info.URL == "":
		return &FieldError{Field: "URL", Err: errors.New("missing")}
	case info.NarHash == nil:
		return &FieldError{Field: "NarHash", Err: errors.New("missing")}
	case info.NarSize == 0:
		return &FieldError{Field: "NarSize", Err: errors.New("missing or zero")}
	}

	// Nix reads a missing Compression as bzip2.
	if info.Compression == "" {
		info.Compression = "bzip2"
	}

	if info.Compression == "none" {
		if info.FileSize != 0 && info.FileSize != info.NarSize {
			return &FieldError{Field: "FileSize", Err: fmt.Errorf("is %d but NarSize is %d and Compression is none", info.FileSize, info.NarSize)}
		}

		if info.FileHash != nil && !sameHash(&info.FileHash.Hash, &info.NarHash.Hash) {
			return &FieldError{Field: "FileHash", Err: errors.New("differs from NarHash but Compression is none")}
		}
	}

	return nil
}

func checkDeriver(value string) error {
	if !strings.HasSuffix(value, ".drv") {
		return fmt.Errorf("%q does not end in .drv", value)
	}

	return CheckBaseName(value)
}

// ParseHash parses a hash in any form a .narinfo file may use: nix32,
// base16 or base64 after an "<algo>:" prefix, or SRI ("sha256-<base64>").
// It checks that the digest has the length of its algorithm.
func ParseHash(value string) (*nixhash.HashWithEncoding, error) {
	h, err := nixhash.ParseAny(value, nil)
	if err != nil {
		return nil, fmt.Errorf("invalid hash %q: %w", truncate(value), err)
	}

	// go-nix accepts 44 base64 characters without padding, which decode
	// to 33 bytes instead of the 32 of a SHA-256 digest.
	if len(h.Digest()) != h.Algo().Func().Size() {
		return nil, fmt.Errorf("invalid hash %q: digest has %d bytes, want %d", truncate(value), len(h.Digest()), h.Algo().Func().Size())
	}

	return h, nil
}

func parseSize(value string) (uint64, error) {
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("invalid size %q", truncate(value))
	}

	return n, nil
}

func sameHash(a, b *nixhash.Hash) bool {
	return a.Algo() == b.Algo() && bytes.Equal(a.Digest(), b.Digest())
}

// truncate shortens a value quoted in an error message, because a line
// may be up to MaxLineSize bytes long.
func truncate(s string) string {
	const maxQuoted = 128
	if len(s) <= maxQuoted {
		return s
	}

	return s[:maxQuoted] + "..."
}
