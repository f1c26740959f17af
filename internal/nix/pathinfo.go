package nix

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// ErrInvalidPath is wrapped when nix reports a store path as not valid,
// that is, not present in the store.
var ErrInvalidPath = errors.New("store path is not valid")

// PathInfo describes a valid store path.
type PathInfo struct {
	StorePath string
	// NarHash is the SRI hash of the NAR serialisation, "sha256-<base64>",
	// whatever form nix printed.
	NarHash string
	// NarSize is the NAR serialisation's size in bytes.
	NarSize uint64
	// References are absolute store paths, sorted.
	References []string
	// Deriver is the .drv store path, empty if unknown.
	Deriver string
	// CA is the content address, empty for input-addressed paths.
	CA string
}

// PathInfo returns the path info of each store path with `nix path-info
// --json`, in the order of paths. A path that is not valid returns an error
// wrapping ErrInvalidPath. Paths must be outputs or sources, not .drv
// files: Nix 2.8 takes a .drv argument to mean its outputs.
func (c *Client) PathInfo(ctx context.Context, paths ...string) ([]PathInfo, error) {
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			return nil, fmt.Errorf("path info %q: .drv files are not supported, because nix versions disagree on what the argument means", p)
		}
	}
	if len(paths) == 0 {
		return nil, nil
	}

	out, err := c.runOutput(ctx, command{
		binary: c.cfg.Binary,
		name:   "nix path-info",
		args:   append([]string{"path-info", "--json", "--"}, paths...),
	})
	if err != nil {
		return nil, err
	}
	infos, err := ParsePathInfo(out)
	if err != nil {
		return nil, err
	}

	byPath := make(map[string]PathInfo, len(infos))
	for _, info := range infos {
		byPath[info.StorePath] = info
	}
	result := make([]PathInfo, 0, len(paths))
	for _, p := range paths {
		info, ok := byPath[p]
		if !ok {
			return nil, fmt.Errorf("path info %q: %w", p, ErrInvalidPath)
		}
		result = append(result, info)
	}
	return result, nil
}

// ClosureInfo returns the path info of paths and of every store path they
// refer to, transitively, with `nix path-info --recursive --json`, sorted
// by store path. A path that is not valid returns an error wrapping
// ErrInvalidPath. Like PathInfo it rejects .drv arguments, but .drv files
// in the closure, such as one that an output names, are listed as files.
func (c *Client) ClosureInfo(ctx context.Context, paths ...string) ([]PathInfo, error) {
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			return nil, fmt.Errorf("closure info %q: .drv files are not supported, because nix versions disagree on what the argument means", p)
		}
	}
	if len(paths) == 0 {
		return nil, nil
	}

	out, err := c.runOutput(ctx, command{
		binary: c.cfg.Binary,
		name:   "nix path-info --recursive",
		args:   append([]string{"path-info", "--recursive", "--json", "--"}, paths...),
	})
	var nixErr *Error
	if errors.As(err, &nixErr) && strings.Contains(nixErr.Message, "is not valid") {
		// Nix 2.8 fails on an invalid argument when it computes a closure.
		return nil, fmt.Errorf("closure info: %w: %w", ErrInvalidPath, err)
	}
	if err != nil {
		return nil, err
	}
	infos, err := ParsePathInfo(out)
	if err != nil {
		return nil, err
	}

	// Nix versions that list an invalid argument instead of failing
	// mark it invalid or null, and ParsePathInfo leaves it out.
	for _, p := range paths {
		_, found := slices.BinarySearchFunc(infos, p, func(info PathInfo, path string) int { return strings.Compare(info.StorePath, path) })
		if !found {
			return nil, fmt.Errorf("closure info %q: %w", p, ErrInvalidPath)
		}
	}
	return infos, nil
}

// pathInfoJSON covers one path in `nix path-info --json` output of Nix 2.8
// to 2.18 (a list of objects with "path") and 2.19 and later (an object
// keyed by path, null for an invalid path).
type pathInfoJSON struct {
	Path       string   `json:"path"`
	Valid      *bool    `json:"valid"`
	NarHash    string   `json:"narHash"`
	NarSize    *uint64  `json:"narSize"`
	References []string `json:"references"`
	Deriver    *string  `json:"deriver"`
	CA         *string  `json:"ca"`
}

// ParsePathInfo parses `nix path-info --json` output in either shape and
// returns the valid paths, sorted by store path. Invalid paths are left
// out. Hashes are converted to SRI form.
func ParsePathInfo(data []byte) ([]PathInfo, error) {
	data = bytes.TrimSpace(data)
	var entries []pathInfoJSON

	switch {
	case bytes.HasPrefix(data, []byte("[")):
		if err := json.Unmarshal(data, &entries); err != nil {
			return nil, fmt.Errorf("parse path info: %w", err)
		}
	case bytes.HasPrefix(data, []byte("{")):
		var keyed map[string]*pathInfoJSON
		if err := json.Unmarshal(data, &keyed); err != nil {
			return nil, fmt.Errorf("parse path info: %w", err)
		}
		for path, entry := range keyed {
			if entry == nil {
				continue
			}
			entry.Path = path
			entries = append(entries, *entry)
		}
	default:
		return nil, errors.New("parse path info: expected a JSON list or object")
	}

	var infos []PathInfo
	for _, e := range entries {
		if e.Valid != nil && !*e.Valid {
			continue
		}
		info, err := e.toPathInfo()
		if err != nil {
			return nil, fmt.Errorf("parse path info %q: %w", e.Path, err)
		}
		infos = append(infos, info)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].StorePath < infos[j].StorePath })
	return infos, nil
}

func (e pathInfoJSON) toPathInfo() (PathInfo, error) {
	if !strings.HasPrefix(e.Path, "/") {
		return PathInfo{}, fmt.Errorf("field %q is not an absolute store path", "path")
	}
	if e.NarSize == nil {
		return PathInfo{}, fmt.Errorf("field %q is missing", "narSize")
	}
	narHash, err := SRIHash(e.NarHash)
	if err != nil {
		return PathInfo{}, fmt.Errorf("field %q: %w", "narHash", err)
	}

	info := PathInfo{
		StorePath:  e.Path,
		NarHash:    narHash,
		NarSize:    *e.NarSize,
		References: append([]string{}, e.References...),
	}
	sort.Strings(info.References)
	if e.Deriver != nil {
		info.Deriver = *e.Deriver
	}
	if e.CA != nil {
		info.CA = *e.CA
	}
	return info, nil
}

// SRIHash converts a sha256 hash in any form nix prints, such as
// "sha256-<base64>", "sha256:<nix32>" or "sha256:<hex>", to SRI form.
func SRIHash(s string) (string, error) {
	if s == "" {
		return "", errors.New("hash is empty")
	}
	h, err := nixhash.ParseAny(s, nil)
	if err != nil {
		return "", fmt.Errorf("parse hash %q: %w", s, err)
	}
	if h.Algo() != nixhash.SHA256 {
		return "", fmt.Errorf("hash %q: algorithm %s, want sha256", s, h.Algo())
	}
	return h.Format(nixhash.SRI, true), nil
}
