package narinfo

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
	"github.com/nix-community/go-nix/pkg/nixhash"
)

// SecretKey is an Ed25519 signing key with a name, written by Nix as
// "<name>:<base64 of the 64-byte key>".
type SecretKey = signature.SecretKey

// PublicKey is an Ed25519 public key with a name, written by Nix as
// "<name>:<base64 of the 32-byte key>", the form of trusted-public-keys.
type PublicKey = signature.PublicKey

// ErrNoTrustedSignature is returned by Verify when no signature of a
// narinfo is valid under a trusted key.
var ErrNoTrustedSignature = errors.New("narinfo has no valid signature from a trusted key")

// ParseSecretKey parses a key in Nix's "<name>:<base64>" format, as
// written by nix-store --generate-binary-cache-key.
func ParseSecretKey(s string) (SecretKey, error) {
	key, err := signature.LoadSecretKey(strings.TrimSpace(s))
	if err != nil {
		return SecretKey{}, fmt.Errorf("parse secret key: %w", err)
	}

	return key, nil
}

// ParsePublicKey parses a key in Nix's "<name>:<base64>" format.
func ParsePublicKey(s string) (PublicKey, error) {
	key, err := signature.ParsePublicKey(strings.TrimSpace(s))
	if err != nil {
		return PublicKey{}, fmt.Errorf("parse public key: %w", err)
	}

	return key, nil
}

// GenerateKey creates a key pair named name, such as "cache.example.org-1",
// from crypto/rand.
func GenerateKey(name string) (SecretKey, PublicKey, error) {
	if name == "" || strings.ContainsAny(name, ": \t\n") {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate key: invalid key name %q", name)
	}

	secret, public, err := signature.GenerateKeypair(name, rand.Reader)
	if err != nil {
		return SecretKey{}, PublicKey{}, fmt.Errorf("generate key: %w", err)
	}

	return secret, public, nil
}

// Fingerprint returns the string that Nix signs for a store path:
// "1;<store path>;sha256:<nix32 NarHash>;<NarSize>;<references>", where
// the references are absolute paths in the directory of StorePath, sorted
// and joined by commas. It fails when NarHash is missing or not SHA-256.
func Fingerprint(info *NarInfo) (string, error) {
	if info.NarHash == nil || info.NarHash.Algo() != nixhash.SHA256 {
		return "", &FieldError{Field: "NarHash", Err: errors.New("missing or not SHA-256")}
	}

	storeDir := path.Dir(info.StorePath)

	refs := make([]string, 0, len(info.References))
	for _, ref := range info.References {
		refs = append(refs, storeDir+"/"+ref)
	}

	// Nix keeps references in a sorted set, so the fingerprint lists
	// them in order and once each whatever order the file has.
	slices.Sort(refs)
	refs = slices.Compact(refs)

	fingerprint := "1;" + info.StorePath + ";" +
		formatHash(&info.NarHash.Hash) + ";" +
		strconv.FormatUint(info.NarSize, 10) + ";" +
		strings.Join(refs, ",")

	return fingerprint, nil
}

// Sign adds a signature by key to info. It keeps the existing signatures
// and adds none when an identical one is already present.
func Sign(info *NarInfo, key SecretKey) error {
	fingerprint, err := Fingerprint(info)
	if err != nil {
		return fmt.Errorf("sign narinfo: %w", err)
	}

	sig, err := key.Sign(nil, fingerprint)
	if err != nil {
		return fmt.Errorf("sign narinfo: %w", err)
	}

	for _, existing := range info.Signatures {
		if existing.Name == sig.Name && slices.Equal(existing.Data, sig.Data) {
			return nil
		}
	}

	info.Signatures = append(info.Signatures, sig)

	return nil
}

// Verify returns nil when at least one signature of info is valid under a
// key of trusted with the same name, as Nix requires before it
// substitutes a path. Otherwise it returns an error wrapping
// ErrNoTrustedSignature.
func Verify(info *NarInfo, trusted []PublicKey) error {
	valid, err := ValidSignatures(info, trusted)
	if err != nil {
		return fmt.Errorf("verify narinfo: %w", err)
	}

	if len(valid) == 0 {
		return fmt.Errorf("verify narinfo %q: %w", info.StorePath, ErrNoTrustedSignature)
	}

	return nil
}

// ValidSignatures returns the signatures of info that are valid under a
// key of trusted with the same name, in their order in info.
func ValidSignatures(info *NarInfo, trusted []PublicKey) ([]signature.Signature, error) {
	fingerprint, err := Fingerprint(info)
	if err != nil {
		return nil, err
	}

	// go-nix's signature.VerifyFirst stops at the first signature whose
	// key name matches, so a bad signature would hide a good one.
	var valid []signature.Signature
	for _, sig := range info.Signatures {
		for _, key := range trusted {
			if key.Name == sig.Name && len(key.Data) == ed25519.PublicKeySize &&
				ed25519.Verify(key.Data, []byte(fingerprint), sig.Data) {
				valid = append(valid, sig)
				break
			}
		}
	}

	return valid, nil
}
