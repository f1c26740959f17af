package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

// errUploadEnded stops a NAR dump whose reader returned.
var errUploadEnded = errors.New("NAR upload ended before the dump")

// Build realises the derivation, substituting missing inputs from the
// configured substituters, and uploads the runtime closure of its outputs:
// each output and every store path it refers to, transitively, such as an
// input source that an output embeds. It uploads references before the
// paths that refer to them and skips the paths nars holds already, so a
// sink that rejects a NAR whose references it lacks accepts every upload. The outputs have GC
// roots from the realise until the upload ends. The build log goes to log
// as nix writes it. A failed build returns a *protocol.BuildError carrying
// nix's message; other failures, such as a .drv missing from the worker's
// store, return a plain error.
//
// A .drv file missing from the worker's store, because another worker
// evaluated it, is substituted by nix from the substituters before the
// build, so the node's cache must hold it.
func (w *Worker) Build(ctx context.Context, req protocol.BuildRequest, log io.Writer, nars protocol.NARSink) (protocol.BuildResult, error) {
	res, err := w.build(ctx, req, log, nars)
	return res, markFault(err)
}

func (w *Worker) build(ctx context.Context, req protocol.BuildRequest, log io.Writer, nars protocol.NARSink) (protocol.BuildResult, error) {
	acquired, err := w.acquire(ctx)
	if err != nil {
		return protocol.BuildResult{}, err
	}
	// The slot is given back once nix is done, before the upload.
	release := sync.OnceFunc(acquired)
	defer release()

	logger := w.logger.With("drv_path", req.DrvPath)
	started := time.Now()
	logger.Info("build started")

	// Check the .drv before running nix when it is here; otherwise
	// Realise substitutes it and it is read afterwards.
	drv, readErr := w.nix.ReadDerivation(req.DrvPath)
	if readErr != nil && !errors.Is(readErr, fs.ErrNotExist) {
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, readErr)
	}

	rootDir, err := os.MkdirTemp(w.gcRootDir, "gradient-gcroot-*")
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("build %q: create GC root directory: %w", req.DrvPath, err)
	}
	defer func() {
		// Removing the symlinks ends the roots. Nix deletes the stale
		// entries that point to them in its next garbage collection.
		if err := os.RemoveAll(rootDir); err != nil {
			logger.Warn("remove GC roots failed", "dir", rootDir, "error", err)
		}
	}()

	paths, err := w.nix.Realise(ctx, req.DrvPath, filepath.Join(rootDir, "result"), log)
	if err != nil {
		if message, ok := nixMessage(err); ok && nix.BuildFailed(err) {
			logger.Info("build failed", "error", message)
			return protocol.BuildResult{}, &protocol.BuildError{DrvPath: req.DrvPath, Message: message}
		}
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
	}
	if readErr != nil {
		if drv, err = w.nix.ReadDerivation(req.DrvPath); err != nil {
			return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
		}
	}
	outputs, err := outputNames(drv, paths)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
	}

	closure, err := w.nix.ClosureInfo(ctx, paths...)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
	}

	// The outputs are built and held by GC roots, so the next build may
	// start while they upload.
	release()
	if n, ok := nars.(protocol.BuiltNotifier); ok {
		n.OutputsBuilt()
	}
	uploaded, err := w.uploadAll(ctx, referencesFirst(closure), nars, nil)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
	}

	result := protocol.BuildResult{Outputs: make(map[string]protocol.PathInfo, len(outputs))}
	for _, info := range closure {
		if name, ok := outputs[info.StorePath]; ok && slices.Contains(paths, info.StorePath) {
			result.Outputs[name] = toProtocol(info)
		}
	}

	logger.Info("build finished", "outputs", len(result.Outputs), "closure_paths", len(closure), "uploaded_paths", uploaded, "duration", time.Since(started))
	return result, nil
}

// upload streams the NAR of info.StorePath into nars unless nars holds the
// path already, and reports whether it sent the NAR. The NAR goes through
// a pipe and is never held in memory.
func (w *Worker) upload(ctx context.Context, info protocol.PathInfo, nars protocol.NARSink) (bool, error) {
	has, err := nars.HasPath(ctx, info.StorePath)
	if err != nil {
		return false, fmt.Errorf("upload %q: %w", info.StorePath, err)
	}
	if has {
		return false, nil
	}

	reader, writer := io.Pipe()
	dumped := make(chan error, 1)
	go func() {
		err := w.nix.DumpPath(ctx, info.StorePath, writer)
		writer.CloseWithError(err)
		dumped <- err
	}()

	putErr := nars.PutNAR(ctx, info, reader)
	// Unblock the dump if PutNAR returned before reading all of it.
	reader.CloseWithError(errUploadEnded)
	dumpErr := <-dumped

	if putErr != nil {
		return false, fmt.Errorf("upload %q: %w", info.StorePath, putErr)
	}
	if dumpErr != nil {
		return false, fmt.Errorf("upload %q: %w", info.StorePath, dumpErr)
	}
	return true, nil
}

// outputNames maps each output path that nix-store printed to its output
// name. Input-addressed outputs have their path in the .drv. A floating
// content-addressed output is recognised by its store path name: the
// derivation's name, followed by "-<output>" unless the output is "out".
func outputNames(drv nix.Derivation, paths []string) (map[string]string, error) {
	names := make(map[string]string, len(paths))
	for name, path := range drv.Outputs {
		if path != "" {
			names[path] = name
		}
	}
	for _, path := range paths {
		if _, ok := names[path]; ok {
			continue
		}
		name, ok := floatingOutputName(drv, path)
		if !ok {
			return nil, fmt.Errorf("output path %q matches no output of the derivation", path)
		}
		names[path] = name
	}
	return names, nil
}

func floatingOutputName(drv nix.Derivation, path string) (string, bool) {
	base := path[strings.LastIndexByte(path, '/')+1:]
	_, pathName, ok := strings.Cut(base, "-")
	if !ok {
		return "", false
	}
	for name, known := range drv.Outputs {
		if known != "" {
			continue
		}
		want := drv.Name + "-" + name
		if name == "out" {
			want = drv.Name
		}
		if pathName == want {
			return name, true
		}
	}
	return "", false
}

// referencesFirst orders infos so that each path comes after the paths it
// refers to. References outside infos and a path's reference to itself
// are ignored. The paths are visited in the order of infos, so the same
// infos give the same order. The store has no reference cycles between
// distinct paths, so none is handled beyond visiting each path once.
func referencesFirst(infos []nix.PathInfo) []nix.PathInfo {
	byPath := make(map[string]nix.PathInfo, len(infos))
	for _, info := range infos {
		byPath[info.StorePath] = info
	}

	// Iterative depth-first post-order, so that a long chain of
	// references cannot exhaust the stack.
	type frame struct {
		info nix.PathInfo
		next int
	}
	ordered := make([]nix.PathInfo, 0, len(infos))
	visited := make(map[string]bool, len(infos))
	for _, root := range infos {
		if visited[root.StorePath] {
			continue
		}
		visited[root.StorePath] = true
		stack := []frame{{info: root}}
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if top.next == len(top.info.References) {
				ordered = append(ordered, top.info)
				stack = stack[:len(stack)-1]
				continue
			}
			ref := top.info.References[top.next]
			top.next++
			info, ok := byPath[ref]
			if !ok || visited[ref] {
				continue
			}
			visited[ref] = true
			stack = append(stack, frame{info: info})
		}
	}
	return ordered
}

// toProtocol converts nix's path info to the protocol's.
func toProtocol(info nix.PathInfo) protocol.PathInfo {
	return protocol.PathInfo{
		StorePath:  info.StorePath,
		NarHash:    info.NarHash,
		NarSize:    info.NarSize,
		References: info.References,
		Deriver:    info.Deriver,
		CA:         info.CA,
	}
}
