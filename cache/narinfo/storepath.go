package narinfo

import (
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

const (
	// HashPartLen is the length of the nix32 hash at the start of a store
	// path's base name.
	HashPartLen = 32

	// maxNameLen is the longest name Nix accepts after the hash and dash.
	maxNameLen = 211
)

// ErrInvalidStorePath is wrapped by every error about a malformed store
// path or store path base name.
var ErrInvalidStorePath = errors.New("invalid store path")

// CheckBaseName checks that name is a store path base name such as
// "7gx4kiv5m0i7d7qkixq2cwzbr10lvxwc-glibc-2.27": a 32-character nix32
// hash, a dash, and a name of 1 to 211 characters from
// [a-zA-Z0-9+-._?=] that is not "." or "..".
func CheckBaseName(name string) error {
	if len(name) < HashPartLen+2 || name[HashPartLen] != '-' {
		return fmt.Errorf("%w: %q is not <hash>-<name>", ErrInvalidStorePath, name)
	}

	if !IsHashPart(name[:HashPartLen]) {
		return fmt.Errorf("%w: %q has an invalid hash part", ErrInvalidStorePath, name)
	}

	rest := name[HashPartLen+1:]
	if len(rest) > maxNameLen {
		return fmt.Errorf("%w: %q has a name longer than %d characters", ErrInvalidStorePath, name, maxNameLen)
	}

	if rest == "." || rest == ".." {
		return fmt.Errorf("%w: %q has the name %q", ErrInvalidStorePath, name, rest)
	}

	for i := 0; i < len(rest); i++ {
		if !isNameChar(rest[i]) {
			return fmt.Errorf("%w: %q contains the character %q", ErrInvalidStorePath, name, rest[i])
		}
	}

	return nil
}

// IsHashPart reports whether s is a 32-character nix32 string, the form of
// the hash part of a store path.
func IsHashPart(s string) bool {
	if len(s) != HashPartLen {
		return false
	}

	for i := 0; i < len(s); i++ {
		if !nixbase32.Is(s[i]) {
			return false
		}
	}

	return true
}

// SplitStorePath splits an absolute store path such as
// "/nix/store/<hash>-<name>" into its store directory and base name, and
// checks both. The store directory must be an absolute, clean path.
func SplitStorePath(storePath string) (storeDir, baseName string, err error) {
	storeDir, baseName = path.Split(storePath)
	storeDir = strings.TrimSuffix(storeDir, "/")

	if storeDir == "" || !path.IsAbs(storeDir) || path.Clean(storeDir) != storeDir {
		return "", "", fmt.Errorf("%w: %q is not in an absolute store directory", ErrInvalidStorePath, storePath)
	}

	if err := CheckBaseName(baseName); err != nil {
		return "", "", err
	}

	return storeDir, baseName, nil
}

// HashPart returns the hash part of a store path or store path base name
// that has already been checked.
func HashPart(storePath string) string {
	base := path.Base(storePath)
	if len(base) < HashPartLen {
		return ""
	}

	return base[:HashPartLen]
}

func isNameChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}

	return strings.IndexByte("+-._?=", c) >= 0
}
