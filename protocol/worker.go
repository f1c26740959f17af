package protocol

import (
	"context"
	"errors"
	"io"
)

// Worker runs evaluation and build jobs for a node.
//
// Implementations are safe for concurrent use: a node may run several jobs
// on one worker at once, up to the worker's slots. Cancelling ctx stops the
// job and its nix processes; the method then returns ctx's error.
type Worker interface {
	// Evaluate locks and evaluates a flake. Progress lines, such as the
	// entry point being evaluated, go to progress.
	Evaluate(ctx context.Context, req EvalRequest, progress io.Writer) (EvalResult, error)

	// Build builds one derivation and uploads each output through nars
	// before it returns. The build log goes to log as nix writes it.
	// A builder that fails returns a *BuildError. When nars is a
	// BuiltNotifier, Build notifies it when the outputs are built.
	Build(ctx context.Context, req BuildRequest, log io.Writer, nars NARSink) (BuildResult, error)
}

// NARSink receives the NARs of built store paths.
type NARSink interface {
	// HasPath reports whether the sink already holds the store path, so
	// the worker can skip its upload.
	HasPath(ctx context.Context, storePath string) (bool, error)

	// PutNAR stores the uncompressed NAR serialisation read from nar.
	// The sink verifies info.NarHash and info.NarSize against the bytes
	// and stores nothing when they differ.
	PutNAR(ctx context.Context, info PathInfo, nar io.Reader) error
}

// BuiltNotifier is implemented by a NARSink that wants to know when the
// derivation of a Build is built, before the worker uploads its outputs.
// Worker.Build calls OutputsBuilt at most once, after nix built the
// outputs and before the first upload. A node uses it to start the next
// link of a chain on the same worker while the uploads go on.
type BuiltNotifier interface {
	OutputsBuilt()
}

// BuildError reports a build that nix ran and that failed, as opposed to a
// fault of the worker itself such as a missing nix binary.
type BuildError struct {
	DrvPath string
	// Message is nix's last error message, such as "builder for '...'
	// failed with exit code 1".
	Message string
}

func (e *BuildError) Error() string {
	return "build " + e.DrvPath + " failed: " + e.Message
}

// IsBuildError reports whether err is or wraps a *BuildError.
func IsBuildError(err error) bool {
	var be *BuildError
	return errors.As(err, &be)
}
