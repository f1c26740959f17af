//go:build !linux

package nix

import "syscall"

// processAttributes puts nix in its own process group.
// NOTE: outside Linux nothing stops nix when the worker is killed, so a
// build may outlive it.
func processAttributes() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}
