package worker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"

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
	drvNARs := map[string][]byte{}
	infos, err := w.closureInfos(ctx, paths, drvNARs)
	if err != nil {
		return fmt.Errorf("upload closure: %w", err)
	}
	if _, err := w.uploadAll(ctx, infos, nars, drvNARs); err != nil {
		return fmt.Errorf("upload closure: %w", err)
	}
	return nil
}

// uploadAll uploads the paths of infos in their order that nars does not
// hold, and returns how many it uploaded. The caller orders infos
// references first. A sink with a Missing method, such as the protocol's
// remote sink, is asked about all paths at once, and any other sink path
// by path. The NAR of a path in drvNARs is taken from there instead of
// from nix.
func (w *Worker) uploadAll(ctx context.Context, infos []nix.PathInfo, nars protocol.NARSink, drvNARs map[string][]byte) (int, error) {
	if lister, ok := nars.(interface {
		Missing(ctx context.Context, storePaths []string) ([]string, error)
	}); ok {
		all := make([]string, len(infos))
		for i, info := range infos {
			all[i] = info.StorePath
		}
		missing, err := lister.Missing(ctx, all)
		if err != nil {
			return 0, err
		}
		isMissing := make(map[string]bool, len(missing))
		for _, p := range missing {
			isMissing[p] = true
		}
		infos = slices.DeleteFunc(slices.Clone(infos), func(info nix.PathInfo) bool { return !isMissing[info.StorePath] })
	}

	uploaded := 0
	for _, info := range infos {
		pi := toProtocol(info)
		if nar, ok := drvNARs[pi.StorePath]; ok {
			if err := nars.PutNAR(ctx, pi, bytes.NewReader(nar)); err != nil {
				return uploaded, fmt.Errorf("upload %q: %w", pi.StorePath, err)
			}
			uploaded++
			continue
		}
		sent, err := w.upload(ctx, pi, nars)
		if err != nil {
			return uploaded, err
		}
		if sent {
			uploaded++
		}
	}
	return uploaded, nil
}

// closureInfos returns the path info of paths and of every path they refer
// to, transitively, each path after the paths it refers to. It runs nix
// once per level of references that were not known yet, and puts the NAR
// of each .drv file into drvNARs.
func (w *Worker) closureInfos(ctx context.Context, paths []string, drvNARs map[string][]byte) ([]nix.PathInfo, error) {
	known := map[string]nix.PathInfo{}
	next := slices.Compact(slices.Sorted(slices.Values(paths)))
	for len(next) > 0 {
		infos, err := w.pathInfos(ctx, next, drvNARs)
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

	infos := make([]nix.PathInfo, 0, len(known))
	for _, p := range slices.Sorted(maps.Keys(known)) {
		infos = append(infos, known[p])
	}
	return referencesFirst(infos), nil
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

// pathInfos returns the path info of each path. Nix 2.8's path-info and
// dump-path take a .drv argument to mean the derivation's outputs, so the
// info and the NAR of .drv files are made from the files themselves, and
// the NARs go into drvNARs.
func (w *Worker) pathInfos(ctx context.Context, paths []string, drvNARs map[string][]byte) ([]nix.PathInfo, error) {
	var drvs, others []string
	for _, p := range paths {
		if strings.HasSuffix(p, ".drv") {
			drvs = append(drvs, p)
		} else {
			others = append(others, p)
		}
	}
	infos, err := w.nix.PathInfo(ctx, others...)
	if err != nil {
		return nil, err
	}
	for _, p := range drvs {
		info, nar, err := w.drvPathInfo(p)
		if err != nil {
			return nil, err
		}
		infos = append(infos, info)
		drvNARs[p] = nar
	}
	return infos, nil
}

// drvPathInfo returns the path info and the NAR of a .drv file. A .drv is
// a text file added to the store with its inputs as references, so its
// references are its input derivations and sources, and its content
// address is "text:sha256:" and the nix32 SHA-256 of the file.
func (w *Worker) drvPathInfo(drvPath string) (nix.PathInfo, []byte, error) {
	drv, err := w.nix.ReadDerivation(drvPath)
	if err != nil {
		return nix.PathInfo{}, nil, err
	}
	contents, err := os.ReadFile(w.nix.RealPath(drvPath))
	if err != nil {
		return nix.PathInfo{}, nil, fmt.Errorf("read derivation %q: %w", drvPath, err)
	}

	// The NAR of a regular, non-executable file.
	var buf bytes.Buffer
	nw, err := nar.NewWriter(&buf)
	if err == nil {
		err = nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))})
	}
	if err == nil {
		_, err = nw.Write(contents)
	}
	if err == nil {
		err = nw.Close()
	}
	if err != nil {
		return nix.PathInfo{}, nil, fmt.Errorf("serialise derivation %q: %w", drvPath, err)
	}
	narHash := sha256.Sum256(buf.Bytes())
	fileHash := sha256.Sum256(contents)

	refs := slices.Concat(slices.Collect(maps.Keys(drv.InputDrvs)), drv.InputSrcs)
	slices.Sort(refs)
	return nix.PathInfo{
		StorePath:  drvPath,
		NarHash:    "sha256-" + base64.StdEncoding.EncodeToString(narHash[:]),
		NarSize:    uint64(buf.Len()),
		References: slices.Compact(refs),
		CA:         "text:sha256:" + nixbase32.EncodeToString(fileHash[:]),
	}, buf.Bytes(), nil
}
