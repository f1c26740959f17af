//go:build !linux

package sim

import "time"

// threadCPUTime returns the wall clock, because this platform offers no
// cheap per-thread CPU clock.
func threadCPUTime() time.Duration {
	return time.Duration(time.Now().UnixNano())
}
