package worker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

// errUploadEnded stops a NAR dump whose reader returned.
var errUploadEnded = errors.New("NAR upload ended before the dump")

// Build realises the derivation, substituting missing inputs from the
// configured substituters, and uploads each output that nars does not
// already hold. The build log goes to log as nix writes it. A failed
// build returns a *protocol.BuildError carrying nix's message; other
// failures, such as a .drv missing from the worker's store, return a
// plain error.
//
// A .drv file missing from the worker's store, because another worker
// evaluated it, is substituted by nix from the substituters before the
// build, so the node's cache must hold it.
func (w *Worker) Build(ctx context.Context, req protocol.BuildRequest, log io.Writer, nars protocol.NARSink) (protocol.BuildResult, error) {
	release, err := w.acquire(ctx)
	if err != nil {
		return protocol.BuildResult{}, err
	}
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

	paths, err := w.nix.Realise(ctx, req.DrvPath, log)
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

	infos, err := w.nix.PathInfo(ctx, paths...)
	if err != nil {
		return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
	}

	result := protocol.BuildResult{Outputs: make(map[string]protocol.PathInfo, len(infos))}
	for _, info := range referencesFirst(infos) {
		pi := protocol.PathInfo{
			StorePath:  info.StorePath,
			NarHash:    info.NarHash,
			NarSize:    info.NarSize,
			References: info.References,
			Deriver:    info.Deriver,
			CA:         info.CA,
		}
		if err := w.upload(ctx, pi, nars); err != nil {
			return protocol.BuildResult{}, fmt.Errorf("build %q: %w", req.DrvPath, err)
		}
		result.Outputs[outputs[info.StorePath]] = pi
	}

	logger.Info("build finished", "outputs", len(result.Outputs), "duration", time.Since(started))
	return result, nil
}

// upload streams the NAR of info.StorePath into nars unless nars holds the
// path already. The NAR goes through a pipe and is never held in memory.
func (w *Worker) upload(ctx context.Context, info protocol.PathInfo, nars protocol.NARSink) error {
	has, err := nars.HasPath(ctx, info.StorePath)
	if err != nil {
		return fmt.Errorf("upload %q: %w", info.StorePath, err)
	}
	if has {
		return nil
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
		return fmt.Errorf("upload %q: %w", info.StorePath, putErr)
	}
	if dumpErr != nil {
		return fmt.Errorf("upload %q: %w", info.StorePath, dumpErr)
	}
	return nil
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

// referencesFirst orders the outputs so that an output comes after the
// other outputs it refers to, so a cache that checks references finds
// them. Outputs that do not refer to each other stay in path order.
func referencesFirst(infos []nix.PathInfo) []nix.PathInfo {
	var ordered []nix.PathInfo
	placed := make(map[string]bool, len(infos))
	remaining := slices.Clone(infos)
	for len(remaining) > 0 {
		progress := false
		for i := 0; i < len(remaining); i++ {
			info := remaining[i]
			ready := true
			for _, ref := range info.References {
				if ref != info.StorePath && !placed[ref] && containsPath(remaining, ref) {
					ready = false
					break
				}
			}
			if ready {
				ordered = append(ordered, info)
				placed[info.StorePath] = true
				remaining = slices.Delete(remaining, i, i+1)
				i--
				progress = true
			}
		}
		if !progress {
			// Outputs that refer to each other in a cycle keep their order.
			return append(ordered, remaining...)
		}
	}
	return ordered
}

func containsPath(infos []nix.PathInfo, path string) bool {
	return slices.ContainsFunc(infos, func(info nix.PathInfo) bool { return info.StorePath == path })
}
