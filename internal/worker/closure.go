package worker

import (
	"fmt"
	"maps"
	"slices"

	"github.com/gradient-ci/gradient/protocol"
)

// closure reads the .drv files of roots and of everything they depend on
// from the store, and returns each derivation once, inputs before the
// derivations that use them. The order is deterministic: roots and inputs
// are visited in sorted order.
func (w *Worker) closure(roots []string) ([]protocol.Derivation, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := make(map[string]int)
	var order []protocol.Derivation

	// Iterative depth-first search, so deep chains of derivations cannot
	// exhaust the stack. Each frame holds a drv and its remaining inputs.
	type frame struct {
		drv    protocol.Derivation
		inputs []string
	}
	var stack []frame

	push := func(drvPath string) error {
		drv, err := w.nix.ReadDerivation(drvPath)
		if err != nil {
			return err
		}
		state[drvPath] = visiting
		inputs := slices.Sorted(maps.Keys(drv.InputDrvs))
		stack = append(stack, frame{
			drv: protocol.Derivation{
				DrvPath:                drvPath,
				Name:                   drv.Name,
				System:                 drv.System,
				Outputs:                drv.Outputs,
				InputDrvs:              slices.Clone(inputs),
				InputSrcs:              drv.InputSrcs,
				RequiredSystemFeatures: drv.RequiredSystemFeatures,
				ParallelBuilding:       drv.ParallelBuilding,
			},
			inputs: inputs,
		})
		return nil
	}

	sortedRoots := slices.Sorted(slices.Values(roots))
	for _, root := range slices.Compact(sortedRoots) {
		if state[root] == done {
			continue
		}
		if err := push(root); err != nil {
			return nil, err
		}
		for len(stack) > 0 {
			top := &stack[len(stack)-1]
			if len(top.inputs) == 0 {
				state[top.drv.DrvPath] = done
				order = append(order, top.drv)
				stack = stack[:len(stack)-1]
				continue
			}

			input := top.inputs[0]
			top.inputs = top.inputs[1:]
			switch state[input] {
			case done:
				continue
			case visiting:
				return nil, fmt.Errorf("read derivation closure: cycle through %q", input)
			}
			if err := push(input); err != nil {
				return nil, err
			}
		}
	}
	return order, nil
}
