package narinfo

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrNotContentAddressed is wrapped by CheckContentAddress when a narinfo
// has no CA field, or one whose store path does not follow from it.
var ErrNotContentAddressed = errors.New("store path does not follow from its CA field")

// CheckContentAddress checks that the store path of info is the one Nix
// computes from its CA field, its name and its references, so the path is
// trusted without a signature, as Nix trusts it. It understands
// "text:sha256:<hash>" and "fixed:[r:]<algo>:<hash>". For
// "fixed:r:sha256" it also checks that the CA hash is the NarHash.
func CheckContentAddress(info *NarInfo) error {
	if info.CA == "" {
		return fmt.Errorf("%w: no CA field", ErrNotContentAddressed)
	}

	storeDir, baseName, err := SplitStorePath(info.StorePath)
	if err != nil {
		return err
	}

	name := baseName[HashPartLen+1:]

	var refs []string

	selfRef := false

	for _, ref := range info.References {
		if ref == baseName {
			selfRef = true
			continue
		}

		refs = append(refs, storeDir+"/"+ref)
	}

	slices.Sort(refs)

	want, err := contentAddressedPath(storeDir, name, info, refs, selfRef)
	if err != nil {
		return err
	}

	if want != info.StorePath {
		return fmt.Errorf("%w: CA %q gives %q, not %q", ErrNotContentAddressed, truncate(info.CA), want, info.StorePath)
	}

	return nil
}

func contentAddressedPath(storeDir, name string, info *NarInfo, refs []string, selfRef bool) (string, error) {
	method, rest, _ := strings.Cut(info.CA, ":")

	switch method {
	case "text":
		h, err := nixhash.ParseAny(rest, nil)
		if err != nil || h.Algo() != nixhash.SHA256 || selfRef {
			return "", fmt.Errorf("%w: invalid text CA %q", ErrNotContentAddressed, truncate(info.CA))
		}

		return makeStorePath(storeDir, makeType("text", refs, false), h.Digest(), name), nil
	case "fixed":
		recursive := strings.HasPrefix(rest, "r:")
		rest = strings.TrimPrefix(rest, "r:")

		h, err := nixhash.ParseAny(rest, nil)
		if err != nil {
			return "", fmt.Errorf("%w: invalid fixed CA %q", ErrNotContentAddressed, truncate(info.CA))
		}

		if recursive && h.Algo() == nixhash.SHA256 {
			if info.NarHash == nil || !sameHash(&h.Hash, &info.NarHash.Hash) {
				return "", fmt.Errorf("%w: CA %q differs from NarHash", ErrNotContentAddressed, truncate(info.CA))
			}

			return makeStorePath(storeDir, makeType("source", refs, selfRef), h.Digest(), name), nil
		}

		if len(refs) > 0 || selfRef {
			return "", fmt.Errorf("%w: fixed CA %q with references", ErrNotContentAddressed, truncate(info.CA))
		}

		prefix := "fixed:out:"
		if recursive {
			prefix += "r:"
		}

		inner := sha256.Sum256([]byte(prefix + h.Algo().String() + ":" + hex.EncodeToString(h.Digest()) + ":"))

		return makeStorePath(storeDir, "output:out", inner[:], name), nil
	default:
		return "", fmt.Errorf("%w: unsupported CA %q", ErrNotContentAddressed, truncate(info.CA))
	}
}

// makeType returns the type string of a store path fingerprint: the type,
// then each reference, then ":self" for a self-reference.
func makeType(kind string, refs []string, selfRef bool) string {
	var b strings.Builder

	b.WriteString(kind)

	for _, ref := range refs {
		b.WriteString(":")
		b.WriteString(ref)
	}

	if selfRef {
		b.WriteString(":self")
	}

	return b.String()
}

// makeStorePath computes a store path the way Nix does: the SHA-256 of
// "<type>:sha256:<hex digest>:<store dir>:<name>", folded to 20 bytes and
// written in nix32.
func makeStorePath(storeDir, kind string, sha256Digest []byte, name string) string {
	fingerprint := kind + ":sha256:" + hex.EncodeToString(sha256Digest) + ":" + storeDir + ":" + name
	sum := sha256.Sum256([]byte(fingerprint))

	return path.Join(storeDir, nixbase32.EncodeToString(nixhash.CompressHash(sum[:], 20))+"-"+name)
}
