package worker

import (
	"context"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

var (
	_ protocol.PathUploader = (*Worker)(nil)
	_ protocol.PathHolder   = (*Worker)(nil)
)

// UploadClosure uploads paths and everything they refer to, references
// first, skipping the paths nars holds already. After an evaluation the
// paths are .drv files, and their closure is the .drv files and sources
// that another worker needs to build them.
func (w *Worker) UploadClosure(ctx context.Context, paths []string, nars protocol.NARSink) error {
	infos, err := w.closureInfos(ctx, paths)
	if err != nil {
		return fmt.Errorf("upload closure: %w", err)
	}
	if lister, ok := nars.(interface {
		Missing(ctx context.Context, storePaths []string) ([]string, error)
	}); ok {
		all := make([]string, len(infos))
		for i, info := range infos {
			all[i] = info.StorePath
		}
		missing, err := lister.Missing(ctx, all)
		if err != nil {
			return fmt.Errorf("upload closure: %w", err)
		}
		isMissing := make(map[string]bool, len(missing))
		for _, p := range missing {
			isMissing[p] = true
		}
		infos = slices.DeleteFunc(infos, func(info nix.PathInfo) bool { return !isMissing[info.StorePath] })
	}

	for _, info := range infos {
		pi := protocol.PathInfo{
			StorePath:  info.StorePath,
			NarHash:    info.NarHash,
			NarSize:    info.NarSize,
			References: info.References,
			Deriver:    info.Deriver,
			CA:         info.CA,
		}
		if err := w.upload(ctx, pi, nars); err != nil {
			return err
		}
	}
	return nil
}

// closureInfos returns the path info of paths and of every path they refer
// to, transitively, each path after the paths it refers to. It runs nix
// once per level of references that were not known yet.
func (w *Worker) closureInfos(ctx context.Context, paths []string) ([]nix.PathInfo, error) {
	known := map[string]nix.PathInfo{}
	next := slices.Compact(slices.Sorted(slices.Values(paths)))
	for len(next) > 0 {
		infos, err := w.nix.PathInfo(ctx, next...)
		if err != nil {
			return nil, err
		}
		for _, info := range infos {
			known[info.StorePath] = info
		}
		more := map[string]bool{}
		for _, info := range infos {
			for _, ref := range info.References {
				if _, ok := known[ref]; !ok {
					more[ref] = true
				}
			}
		}
		next = slices.Sorted(maps.Keys(more))
	}

	// Depth-first post-order puts every path after its references.
	var order []nix.PathInfo
	visited := make(map[string]bool, len(known))
	var visit func(p string)
	visit = func(p string) {
		info, ok := known[p]
		if !ok || visited[p] {
			return
		}
		visited[p] = true
		for _, ref := range info.References {
			visit(ref)
		}
		order = append(order, info)
	}
	for _, p := range slices.Sorted(maps.Keys(known)) {
		visit(p)
	}
	return order, nil
}

// HavePaths returns the paths of the list that exist in the worker's
// store. It looks at the file system only, so a path that a build is
// writing right now may count as present.
func (w *Worker) HavePaths(ctx context.Context, paths []string) ([]string, error) {
	var have []string
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if _, err := os.Lstat(w.nix.RealPath(p)); err == nil {
			have = append(have, p)
		}
	}
	return have, nil
}
