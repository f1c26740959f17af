package protocol

import (
	"bufio"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
)

// These read what a worker reports about its machine. On systems without
// /proc they return 0, which the node treats as unknown.

func numCPU() int { return runtime.NumCPU() }

// totalMemory returns MemTotal from /proc/meminfo in bytes.
func totalMemory() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kib, err := strconv.ParseUint(fields[1], 10, 64)
			if err != nil {
				return 0
			}
			return kib * 1024
		}
	}
	return 0
}

// loadAverage returns the one-minute load average from /proc/loadavg.
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(b))
	if len(fields) == 0 {
		return 0
	}
	v, err := strconv.ParseFloat(fields[0], 64)
	if err != nil {
		return 0
	}
	return v
}

// freeDisk returns the bytes available to unprivileged users on the file
// system of dir, or of its closest existing parent, since a chroot store
// is created by nix on first use.
func freeDisk(dir string) uint64 {
	var st syscall.Statfs_t
	for syscall.Statfs(dir, &st) != nil {
		parent := filepath.Dir(dir)
		if parent == dir {
			return 0
		}
		dir = parent
	}
	return st.Bavail * uint64(st.Bsize)
}
