package nix

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/nix-community/go-nix/pkg/derivation"
	"github.com/nix-community/go-nix/pkg/storepath"
)

// maxDrvSize bounds the size of a .drv file that ReadDerivation reads.
// Derivations with large inline environment variables run to a few
// megabytes.
const maxDrvSize = 64 << 20

// Derivation is the part of a .drv file that scheduling and building need.
type Derivation struct {
	// Name is the derivation's name attribute.
	Name string
	// System is the platform that builds it, such as "x86_64-linux".
	System string
	// Outputs maps output names to store paths. A path is empty for a
	// floating content-addressed output.
	Outputs map[string]string
	// InputDrvs maps the .drv store paths this derivation depends on to
	// the output names it uses.
	InputDrvs map[string][]string
	// InputSrcs are the store paths of sources, sorted.
	InputSrcs []string
	// RequiredSystemFeatures comes from the requiredSystemFeatures
	// attribute, or its structured attributes equivalent.
	RequiredSystemFeatures []string
	// ParallelBuilding is set when the builder runs in parallel: nixpkgs'
	// stdenv passes enableParallelBuilding = true as the environment
	// variable enableParallelBuilding=1, or as true in structured
	// attributes. A requiredSystemFeatures of big-parallel sets it too.
	ParallelBuilding bool
}

// ReadDerivation reads and parses the .drv file at drvPath from the
// Client's store, directly from the file system: StoreDir + drvPath for a
// chroot store. It does not start nix.
func (c *Client) ReadDerivation(drvPath string) (Derivation, error) {
	if !strings.HasSuffix(drvPath, ".drv") {
		return Derivation{}, fmt.Errorf("read derivation %q: not a .drv store path", drvPath)
	}
	if err := storepath.Validate(drvPath); err != nil {
		return Derivation{}, fmt.Errorf("read derivation %q: %w", drvPath, err)
	}

	f, err := os.Open(c.RealPath(drvPath))
	if err != nil {
		return Derivation{}, fmt.Errorf("read derivation %q: %w", drvPath, err)
	}
	defer f.Close()

	drv, err := ParseDerivation(io.LimitReader(f, maxDrvSize+1))
	if err != nil {
		return Derivation{}, fmt.Errorf("read derivation %q: %w", drvPath, err)
	}
	return drv, nil
}

// ParseDerivation parses a .drv file in ATerm format, at most 64 MiB.
func ParseDerivation(r io.Reader) (Derivation, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxDrvSize+1))
	if err != nil {
		return Derivation{}, fmt.Errorf("parse derivation: %w", err)
	}
	if len(data) > maxDrvSize {
		return Derivation{}, fmt.Errorf("parse derivation: larger than %d bytes", maxDrvSize)
	}

	// go-nix's own validation insists on an output path for every output
	// and rejects floating content-addressed derivations, so it is
	// replaced by the checks below.
	drv, err := derivation.ReadDerivation(strings.NewReader(string(data)))
	if drv == nil {
		return Derivation{}, fmt.Errorf("parse derivation: %w", err)
	}

	result := Derivation{
		Name:      drv.Name(),
		System:    drv.Platform,
		Outputs:   make(map[string]string, len(drv.Outputs)),
		InputDrvs: make(map[string][]string, len(drv.InputDerivations)),
		InputSrcs: slices.Clone(drv.InputSources),
	}
	for name, output := range drv.Outputs {
		if name == "" {
			return Derivation{}, fmt.Errorf("parse derivation: empty output name")
		}
		if output.Path != "" {
			if err := storepath.Validate(output.Path); err != nil {
				return Derivation{}, fmt.Errorf("parse derivation: output %q: %w", name, err)
			}
		}
		result.Outputs[name] = output.Path
	}
	for path, outputs := range drv.InputDerivations {
		if err := storepath.Validate(path); err != nil || !strings.HasSuffix(path, ".drv") {
			return Derivation{}, fmt.Errorf("parse derivation: input derivation %q is not a .drv store path", path)
		}
		result.InputDrvs[path] = slices.Clone(outputs)
	}
	for _, path := range result.InputSrcs {
		if err := storepath.Validate(path); err != nil {
			return Derivation{}, fmt.Errorf("parse derivation: input source: %w", err)
		}
	}
	slices.Sort(result.InputSrcs)

	if len(result.Outputs) == 0 {
		return Derivation{}, fmt.Errorf("parse derivation: no outputs")
	}
	if result.Name == "" {
		return Derivation{}, fmt.Errorf("parse derivation: name is missing")
	}

	features, err := systemFeatures(drv.Env)
	if err != nil {
		return Derivation{}, fmt.Errorf("parse derivation: %w", err)
	}
	result.RequiredSystemFeatures = features
	result.ParallelBuilding = parallelBuilding(drv.Env) || slices.Contains(features, "big-parallel")
	return result, nil
}

// parallelBuilding reports whether the environment enables parallel
// building. A malformed __json is reported by systemFeatures, so it only
// counts as false here.
func parallelBuilding(env map[string]string) bool {
	if structured, ok := env["__json"]; ok {
		var attrs struct {
			EnableParallelBuilding any `json:"enableParallelBuilding"`
		}
		if json.Unmarshal([]byte(structured), &attrs) != nil {
			return false
		}
		return attrs.EnableParallelBuilding == true
	}
	return env["enableParallelBuilding"] == "1"
}

// systemFeatures returns requiredSystemFeatures from the environment: a
// space-separated string normally, a list inside __json for derivations
// with structured attributes.
func systemFeatures(env map[string]string) ([]string, error) {
	if structured, ok := env["__json"]; ok {
		var attrs struct {
			RequiredSystemFeatures []string `json:"requiredSystemFeatures"`
		}
		if err := json.Unmarshal([]byte(structured), &attrs); err != nil {
			return nil, fmt.Errorf("structured attributes: field %q: %w", "requiredSystemFeatures", err)
		}
		return attrs.RequiredSystemFeatures, nil
	}
	return strings.Fields(env["requiredSystemFeatures"]), nil
}
