package sim

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
)

// Limits on a graph file, which may come from anywhere.
const (
	// MaxGraphFileSize bounds the bytes LoadGraph reads.
	MaxGraphFileSize = 512 << 20
	// MaxDerivations bounds the derivations of a graph.
	MaxDerivations = 1_000_000
	// maxStringLength bounds every path, name, system and feature.
	maxStringLength = 4096
	// maxBuildTime bounds build_time_s, in seconds (one year).
	maxBuildTime = 365 * 24 * 3600
)

// ErrInvalidGraphFile is wrapped by the errors LoadGraph returns for a
// file that is not a valid graph.
var ErrInvalidGraphFile = errors.New("invalid graph file")

// GraphFile is the JSON form of a derivation graph that LoadGraph reads,
// the shape `gradient project graph ORG/PROJECT --json` writes. Field
// names follow protocol.Derivation where they overlap.
type GraphFile struct {
	Derivations []FileDerivation `json:"derivations"`
}

// FileDerivation is one derivation of a GraphFile.
type FileDerivation struct {
	DrvPath  string   `json:"drv_path"`
	Name     string   `json:"name"`
	System   string   `json:"system"`
	Features []string `json:"required_system_features,omitempty"`
	// InputDrvs may name derivations missing from the file only when
	// Cached is set, since a cached derivation's inputs are never needed.
	InputDrvs []string          `json:"input_drvs,omitempty"`
	Outputs   map[string]string `json:"outputs,omitempty"`
	// OutputSize is the NAR size of all outputs in bytes.
	OutputSize uint64 `json:"output_size,omitempty"`
	// BuildTimeSeconds is the measured build time. Zero means unknown,
	// and the simulator uses 60 seconds. The simulator takes it as the
	// work on one core, which underestimates a parallel build measured
	// while it had several cores.
	BuildTimeSeconds float64 `json:"build_time_s,omitempty"`
	// Parallel marks a build that uses every core it gets.
	Parallel bool `json:"parallel_building,omitempty"`
	Cached   bool `json:"cached,omitempty"`
}

// ReadGraphFile loads the graph file at path, see LoadGraph.
func ReadGraphFile(path string) (*Graph, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read graph file: %w", err)
	}
	defer f.Close()

	g, err := LoadGraph(f)
	if err != nil {
		return nil, fmt.Errorf("read graph file %q: %w", path, err)
	}
	return g, nil
}

// LoadGraph decodes a GraphFile from r, reading at most MaxGraphFileSize
// bytes, validates it and orders its derivations inputs first. Errors for
// invalid content wrap ErrInvalidGraphFile and name the field.
func LoadGraph(r io.Reader) (*Graph, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxGraphFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load graph: %w", err)
	}
	if len(data) > MaxGraphFileSize {
		return nil, fmt.Errorf("%w: larger than %d bytes", ErrInvalidGraphFile, MaxGraphFileSize)
	}

	var file GraphFile
	if err := json.Unmarshal(data, &file); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidGraphFile, err)
	}
	if len(file.Derivations) == 0 {
		return nil, fmt.Errorf("%w: derivations is empty", ErrInvalidGraphFile)
	}
	if len(file.Derivations) > MaxDerivations {
		return nil, fmt.Errorf("%w: %d derivations, more than %d", ErrInvalidGraphFile, len(file.Derivations), MaxDerivations)
	}

	index := make(map[string]int, len(file.Derivations))
	for i, d := range file.Derivations {
		if err := validateFileDerivation(d); err != nil {
			return nil, fmt.Errorf("%w: derivations[%d]: %w", ErrInvalidGraphFile, i, err)
		}
		if _, ok := index[d.DrvPath]; ok {
			return nil, fmt.Errorf("%w: drv_path %q appears twice", ErrInvalidGraphFile, d.DrvPath)
		}
		index[d.DrvPath] = i
	}

	return orderFileGraph(file, index)
}

func validateFileDerivation(d FileDerivation) error {
	if d.DrvPath == "" {
		return errors.New("drv_path is empty")
	}
	if !d.Cached && d.System == "" {
		return fmt.Errorf("system of %q is empty", d.DrvPath)
	}
	if !(d.BuildTimeSeconds >= 0 && d.BuildTimeSeconds <= maxBuildTime) {
		return fmt.Errorf("build_time_s of %q is %v, not in [0, %d]", d.DrvPath, d.BuildTimeSeconds, maxBuildTime)
	}

	strs := []string{d.DrvPath, d.Name, d.System}
	strs = append(strs, d.Features...)
	strs = append(strs, d.InputDrvs...)
	for name, path := range d.Outputs {
		strs = append(strs, name, path)
	}
	for _, s := range strs {
		if len(s) > maxStringLength {
			return fmt.Errorf("a string of %q is longer than %d bytes", truncate(d.DrvPath), maxStringLength)
		}
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// orderFileGraph converts file into a Graph whose derivations come after
// their inputs and otherwise keep their order in the file, and rejects
// cycles and inputs that are missing from the file.
func orderFileGraph(file GraphFile, index map[string]int) (*Graph, error) {
	n := len(file.Derivations)
	inputs := make([][]int, n)
	// seen[j] == i+1 when j is already an input of i.
	seen := make([]int, n)
	for i, d := range file.Derivations {
		if d.Cached {
			continue
		}
		for _, in := range d.InputDrvs {
			j, ok := index[in]
			if !ok {
				return nil, fmt.Errorf("%w: input %q of %q is missing from derivations", ErrInvalidGraphFile, truncate(in), truncate(d.DrvPath))
			}
			if j == i {
				return nil, fmt.Errorf("%w: %q depends on itself", ErrInvalidGraphFile, truncate(d.DrvPath))
			}
			if seen[j] == i+1 {
				continue
			}
			seen[j] = i + 1
			inputs[i] = append(inputs[i], j)
		}
	}

	// Depth-first search in file order, with an explicit stack because a
	// chain may be as deep as the graph is large. A derivation is placed
	// after all its inputs; meeting one still on the stack is a cycle.
	const (
		unvisited = iota
		onStack
		placed
	)
	state := make([]uint8, n)
	order := make([]int, 0, n)
	type frame struct{ node, next int }
	var stack []frame
	for root := range n {
		if state[root] != unvisited {
			continue
		}
		stack = append(stack[:0], frame{root, 0})
		state[root] = onStack
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if top.next == len(inputs[top.node]) {
				state[top.node] = placed
				order = append(order, top.node)
				stack = stack[:len(stack)-1]
				continue
			}
			in := inputs[top.node][top.next]
			top.next++
			switch state[in] {
			case onStack:
				return nil, fmt.Errorf("%w: %q is part of a dependency cycle", ErrInvalidGraphFile, truncate(file.Derivations[in].DrvPath))
			case unvisited:
				state[in] = onStack
				stack = append(stack, frame{in, 0})
			}
		}
	}

	position := make([]int, n)
	for pos, i := range order {
		position[i] = pos
	}
	g := &Graph{Derivations: make([]Node, n)}
	for pos, i := range order {
		d := file.Derivations[i]
		node := Node{
			DrvPath:    d.DrvPath,
			Name:       d.Name,
			System:     d.System,
			Features:   d.Features,
			OutputSize: d.OutputSize,
			BuildTime:  d.BuildTimeSeconds,
			Cached:     d.Cached,
		}
		if node.BuildTime == 0 {
			node.BuildTime = typicalTime
		}
		if d.Parallel {
			node.Cores = parallelCores
		}
		for _, j := range inputs[i] {
			node.Inputs = append(node.Inputs, position[j])
		}
		slices.Sort(node.Inputs)
		g.Derivations[pos] = node
	}
	return g, nil
}

// WriteGraph writes g as a GraphFile, the inverse of LoadGraph.
func WriteGraph(w io.Writer, g *Graph) error {
	file := GraphFile{Derivations: make([]FileDerivation, len(g.Derivations))}
	for i, n := range g.Derivations {
		d := FileDerivation{
			DrvPath:          n.DrvPath,
			Name:             n.Name,
			System:           n.System,
			Features:         n.Features,
			OutputSize:       n.OutputSize,
			BuildTimeSeconds: n.BuildTime,
			Cached:           n.Cached,
		}
		for _, in := range n.Inputs {
			d.InputDrvs = append(d.InputDrvs, g.Derivations[in].DrvPath)
		}
		file.Derivations[i] = d
	}

	enc := json.NewEncoder(w)
	enc.SetIndent("", " ")
	if err := enc.Encode(file); err != nil {
		return fmt.Errorf("write graph: %w", err)
	}
	return nil
}
