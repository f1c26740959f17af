//go:build unix

package meshsim

import (
	"syscall"
	"time"
)

// processCPU returns the user and system CPU time this process used so
// far, or zero when the system does not report it.
func processCPU() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}

	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}
