// Package protocol defines the jobs a node sends to its workers and the
// results the workers send back.
//
// The same types travel to the in-process worker of a standalone node and,
// encoded, to remote workers, so a node has one code path for both.
package protocol

// EvalRequest asks a worker to evaluate a flake.
type EvalRequest struct {
	// FlakeRef is any flake reference that nix accepts, such as a path,
	// git+file://, git+https:// or github:.
	FlakeRef string `json:"flake_ref"`

	// EntryPoints are attribute path patterns: "*" matches one attribute
	// name and "**" any number of them, such as "packages.*.*".
	EntryPoints []string `json:"entry_points"`

	// ListOnly asks only for the attributes that match, without their
	// drvPaths: the result's entry points have an empty DrvPath unless
	// they failed, and it has no Derivations. A node lists entry points on
	// one worker and shards their evaluation across the others.
	ListOnly bool `json:"list_only,omitempty"`
}

// EvalResult is the outcome of an EvalRequest. A failure of a single entry
// point is recorded in that EntryPoint; the result itself carries no error.
type EvalResult struct {
	// Flake is the flake as nix locked it.
	Flake LockedFlake `json:"flake"`

	// EntryPoints lists every attribute that matched a pattern, in
	// attribute path order.
	EntryPoints []EntryPoint `json:"entry_points"`

	// Derivations is the closure of the entry points' derivations, each
	// once, inputs before the derivations that depend on them.
	Derivations []Derivation `json:"derivations"`
}

// LockedFlake identifies the exact flake source that was evaluated.
type LockedFlake struct {
	// OriginalURL is the reference as the user wrote it, normalised by nix.
	OriginalURL string `json:"original_url"`
	// LockedURL pins the source, with a revision or a narHash.
	LockedURL string `json:"locked_url"`
	// Revision is the git revision, empty for sources without one.
	Revision string `json:"revision,omitempty"`
	// NarHash is the SRI hash of the flake source tree.
	NarHash string `json:"nar_hash,omitempty"`
	// LastModified is the source's modification time in Unix seconds.
	LastModified int64 `json:"last_modified,omitempty"`
}

// EntryPoint is one flake output attribute that matched an entry point
// pattern.
type EntryPoint struct {
	// Attr is the attribute path, such as "packages.x86_64-linux.hello".
	Attr string `json:"attr"`
	// DrvPath is the store path of the derivation, empty when Error is set.
	DrvPath string `json:"drv_path,omitempty"`
	// Error is nix's own message when evaluating the attribute failed.
	Error string `json:"error,omitempty"`
}

// Derivation is one node of the derivation graph, as read from its .drv
// file.
type Derivation struct {
	// DrvPath is the store path of the .drv file.
	DrvPath string `json:"drv_path"`
	// Name is the derivation's name attribute, such as "hello-2.12".
	Name string `json:"name"`
	// System is the platform that builds it, such as "x86_64-linux".
	System string `json:"system"`
	// Outputs maps output names to store paths. A path is empty for a
	// content-addressed output, whose path is known only after the build.
	Outputs map[string]string `json:"outputs"`
	// InputDrvs are the .drv store paths this derivation depends on.
	InputDrvs []string `json:"input_drvs,omitempty"`
	// InputSrcs are the store paths of sources this derivation uses.
	InputSrcs []string `json:"input_srcs,omitempty"`
	// RequiredSystemFeatures comes from the requiredSystemFeatures
	// attribute, such as "kvm" or "big-parallel".
	RequiredSystemFeatures []string `json:"required_system_features,omitempty"`
	// ParallelBuilding is set when the builder runs in parallel, from
	// enableParallelBuilding or the big-parallel feature. Workers before
	// this field send none, which means serial.
	ParallelBuilding bool `json:"parallel_building,omitempty"`
}

// BuildRequest asks a worker to build one derivation whose inputs are
// already in the node's cache or in the worker's store.
type BuildRequest struct {
	// DrvPath is the store path of the .drv file to build.
	DrvPath string `json:"drv_path"`
}

// BuildResult is the outcome of a BuildRequest that ran the builder.
type BuildResult struct {
	// Outputs describes each output path that the worker built and
	// uploaded, keyed by output name.
	Outputs map[string]PathInfo `json:"outputs"`
}

// PathInfo describes a valid store path the way a narinfo does.
type PathInfo struct {
	// StorePath is the absolute store path.
	StorePath string `json:"store_path"`
	// NarHash is the hash of the path's NAR serialisation in SRI form
	// ("sha256-<base64>").
	NarHash string `json:"nar_hash"`
	// NarSize is the size of the NAR serialisation in bytes.
	NarSize uint64 `json:"nar_size"`
	// References are the absolute store paths this path refers to,
	// possibly including itself.
	References []string `json:"references"`
	// Deriver is the absolute .drv store path that built it, if known.
	Deriver string `json:"deriver,omitempty"`
	// CA is the content address ("fixed:r:sha256:..."), empty for
	// input-addressed paths.
	CA string `json:"ca,omitempty"`
	// Signatures are narinfo signatures ("name:base64") that a sink keeps
	// beside its own, such as a mesh peer's that the fetcher verified. A
	// node drops the signatures that a worker sends.
	Signatures []string `json:"signatures,omitempty"`
}
