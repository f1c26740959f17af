//go:build !unix

package meshsim

import "time"

// processCPU returns zero: the process's CPU time is read only on Unix.
func processCPU() time.Duration { return 0 }
