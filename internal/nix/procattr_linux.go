package nix

import "syscall"

// processAttributes puts nix in its own process group. Pdeathsig stops
// nix, and with it its builders, when the worker dies without cancelling,
// such as on kill -9, so no orphaned build keeps writing into the store.
func processAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}
