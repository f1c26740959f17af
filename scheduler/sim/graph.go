package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
)

// Graph is a derivation graph with the true build time and output size
// of each derivation, which the simulator uses and the scheduler only
// estimates.
type Graph struct {
	// Derivations lists the nodes, every input before the derivations that
	// depend on it.
	Derivations []Node
}

// Node is one derivation of a Graph.
type Node struct {
	DrvPath  string
	Name     string
	System   string
	Features []string
	// Inputs are indexes into Graph.Derivations, each smaller than the
	// node's own index.
	Inputs []int
	// OutputSize is the NAR size of the outputs in bytes.
	OutputSize uint64
	// BuildTime is the build's work: its time in seconds on one core of
	// a worker of speed 1.
	BuildTime float64
	// Cores is the number of cores the build keeps busy when it has them,
	// as a build with enableParallelBuilding does with `make -j`. 0 and 1
	// mean a serial build.
	Cores int
	// Cached marks a derivation whose outputs are in the cache already.
	Cached bool
}

// Kinds lists the graph kinds Generate accepts.
var Kinds = []string{"chain", "diamond", "fanout", "layered", "nixpkgs"}

// DefaultSize returns the number of derivations Generate makes for kind
// when the size is 0.
func DefaultSize(kind string) int {
	switch kind {
	case "chain", "diamond":
		return 100
	case "fanout":
		return 1000
	case "layered":
		return 5000
	default:
		return 20000
	}
}

// Generate returns a graph of the given kind with size derivations, drawn
// from a random source seeded with seed: the same arguments give the same
// graph. Size 0 means DefaultSize(kind).
//
//   - chain: each derivation depends on the one before.
//   - diamond: one root, size-2 derivations that depend on it, and one
//     that depends on all of those.
//   - fanout: one root and size-1 derivations that depend on it.
//   - layered: about sqrt(size) layers, each derivation depending on one
//     to three derivations of earlier layers, mostly the layer before.
//   - nixpkgs: a bootstrap chain, a middle of libraries in layers that
//     depend on the bootstrap's end and on earlier libraries, popular
//     ones more often, and leaves that depend on libraries. Build times
//     and output sizes are log-normal, so a few are far larger than the
//     median.
func Generate(kind string, size int, seed uint64) (*Graph, error) {
	if size == 0 {
		size = DefaultSize(kind)
	}
	if size < 1 || size > MaxDerivations {
		return nil, fmt.Errorf("generate %s graph: size %d is not in [1, %d]", kind, size, MaxDerivations)
	}

	g := &generator{
		rng:         rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		parallelRNG: rand.New(rand.NewPCG(seed, 0x7a11e1)),
	}
	switch kind {
	case "chain":
		g.chain(size)
	case "diamond":
		g.diamond(size)
	case "fanout":
		g.fanout(size)
	case "layered":
		g.layered(size)
	case "nixpkgs":
		g.nixpkgs(size)
	default:
		return nil, fmt.Errorf("generate graph: unknown kind %q, want one of %v", kind, Kinds)
	}
	return &g.graph, nil
}

type generator struct {
	rng *rand.Rand
	// parallelRNG decides which builds are parallel. It is separate from
	// rng so that the graph's shape, times and sizes do not depend on it.
	parallelRNG *rand.Rand
	graph       Graph
}

// parallelCores is Node.Cores of a parallel build: more cores than a
// simulated worker has, so it uses all of them when it runs alone.
const parallelCores = 64

// parallel returns parallelCores with probability share, else 1.
func (g *generator) parallel(share float64) int {
	if g.parallelRNG.Float64() < share {
		return parallelCores
	}
	return 1
}

// logNormal draws from a log-normal distribution with the given median
// and shape sigma, capped at limit.
func (g *generator) logNormal(median, sigma, limit float64) float64 {
	return min(median*math.Exp(sigma*g.rng.NormFloat64()), limit)
}

// add appends a derivation and returns its index. Build times are
// log-normal around medianTime seconds, sizes around medianSize bytes.
func (g *generator) add(prefix string, inputs []int, medianTime, timeSigma, medianSize, sizeSigma float64) int {
	i := len(g.graph.Derivations)
	slices.Sort(inputs)
	inputs = slices.Compact(inputs)
	g.graph.Derivations = append(g.graph.Derivations, Node{
		DrvPath:    "/nix/store/" + strconv.Itoa(i) + "-" + prefix + strconv.Itoa(i) + ".drv",
		Name:       prefix + strconv.Itoa(i) + "-1.0",
		System:     "x86_64-linux",
		Inputs:     inputs,
		BuildTime:  g.logNormal(medianTime, timeSigma, 6*3600),
		OutputSize: uint64(g.logNormal(medianSize, sizeSigma, 8e9)),
	})
	return i
}

const (
	typicalTime = 60.0
	typicalSize = 10e6
)

func (g *generator) chain(size int) {
	for i := 0; i < size; i++ {
		var inputs []int
		if i > 0 {
			inputs = []int{i - 1}
		}
		g.add("chain", inputs, typicalTime, 0.5, typicalSize, 1)
	}
}

func (g *generator) diamond(size int) {
	root := g.add("root", nil, typicalTime, 0.5, typicalSize, 1)
	var middle []int
	for i := 0; i < size-2; i++ {
		middle = append(middle, g.add("mid", []int{root}, typicalTime, 0.5, typicalSize, 1))
	}
	if size > 1 {
		g.add("top", middle, typicalTime, 0.5, typicalSize, 1)
	}
}

func (g *generator) fanout(size int) {
	root := g.add("root", nil, typicalTime, 0.5, typicalSize, 1)
	for i := 1; i < size; i++ {
		g.add("leaf", []int{root}, typicalTime, 0.5, typicalSize, 1)
	}
}

func (g *generator) layered(size int) {
	layers := max(1, int(math.Sqrt(float64(size))))
	var previous, earlier []int
	for l := 0; l < layers; l++ {
		width := size / layers
		if l == layers-1 {
			width = size - len(g.graph.Derivations)
		}
		var current []int
		for i := 0; i < width; i++ {
			var inputs []int
			for k := 1 + g.rng.IntN(3); k > 0 && len(previous) > 0; k-- {
				if len(earlier) > 0 && g.rng.IntN(4) == 0 {
					inputs = append(inputs, earlier[g.rng.IntN(len(earlier))])
				} else {
					inputs = append(inputs, previous[g.rng.IntN(len(previous))])
				}
			}
			current = append(current, g.add("node", inputs, typicalTime, 0.8, typicalSize, 1.5))
		}
		earlier = append(earlier, previous...)
		previous = current
	}
}

// Shares of parallel builds in the nixpkgs-shaped graph, estimates. The
// bootstrap's compilers and C library build with `make -j`. Builds with
// cmake, meson or ninja are parallel by default in nixpkgs, and many
// autotools packages set enableParallelBuilding. Wrappers do no work worth
// spreading.
const (
	bootstrapParallel = 1.0
	libraryParallel   = 0.7
	appParallel       = 0.5
)

// nixpkgs makes the nixpkgs-shaped graph. The proportions are estimates
// chosen to look like a nixpkgs mass rebuild, not measurements of one.
// The bootstrap chain is 1/400 of the derivations but at most 50. The
// libraries are 30% of the rest, in 20 layers, and the others are leaves.
func (g *generator) nixpkgs(size int) {
	bootstrapLength := min(max(size/400, 1), 50, size)
	var stdenv int
	for i := 0; i < bootstrapLength; i++ {
		var inputs []int
		if i > 0 {
			inputs = []int{i - 1}
		}
		stdenv = g.add("bootstrap", inputs, 60, 1.0, 50e6, 0.8)
		g.graph.Derivations[stdenv].Cores = g.parallel(bootstrapParallel)
	}

	remaining := size - bootstrapLength
	libraryCount := remaining * 3 / 10
	const layers = 20
	var libraries []int
	for l := 0; l < layers; l++ {
		width := libraryCount / layers
		if l == layers-1 {
			width = libraryCount - len(libraries)
		}
		var layer []int
		for i := 0; i < width; i++ {
			inputs := []int{stdenv}
			for k := g.rng.IntN(5); k > 0 && len(libraries) > 0; k-- {
				inputs = append(inputs, g.popular(libraries))
			}
			lib := g.add("lib", inputs, 40, 1.3, 5e6, 1.6)
			g.graph.Derivations[lib].Cores = g.parallel(libraryParallel)
			layer = append(layer, lib)
		}
		libraries = append(libraries, layer...)
	}

	leafCount := remaining - libraryCount
	var leaves []int
	for i := 0; i < leafCount; i++ {
		// One leaf in ten wraps an earlier leaf, the way a wrapper or a
		// test derivation follows its package.
		if len(leaves) > 0 && g.rng.IntN(10) == 0 {
			wrapped := leaves[g.rng.IntN(len(leaves))]
			leaves = append(leaves, g.add("wrap", []int{stdenv, wrapped}, 10, 1, 1e5, 1))
			continue
		}
		inputs := []int{stdenv}
		for k := 1 + g.rng.IntN(6); k > 0 && len(libraries) > 0; k-- {
			inputs = append(inputs, g.popular(libraries))
		}
		app := g.add("app", inputs, 20, 1.5, 2e6, 1.8)
		g.graph.Derivations[app].Cores = g.parallel(appParallel)
		leaves = append(leaves, app)
	}
}

// popular picks an element of list, earlier elements far more often: the
// index is len(list) times the cube of a uniform number, so the first 10%
// of the list get about 46% of the picks.
func (g *generator) popular(list []int) int {
	u := g.rng.Float64()
	return list[int(float64(len(list))*u*u*u)]
}
