package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestDefaultNodeListensOnlyForHTTP checks that a node started without
// --mesh-listen opens no libp2p port: its only listening socket is the
// HTTP one.
func TestDefaultNodeListensOnlyForHTTP(t *testing.T) {
	requireNix(t)
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "worker-store"))
	n.mustCLI("cache", "show", "main")

	listening := listeningSockets(t, n.cmd.Process.Pid)
	_, port, err := net.SplitHostPort(n.addr)
	if err != nil {
		t.Fatal(err)
	}
	want := "tcp:" + port
	if len(listening) != 1 || listening[0] != want {
		t.Errorf("listening sockets of the node = %v, want only %s (HTTP)", listening, want)
	}
}

// listeningSockets returns the listening TCP and bound, unconnected UDP
// sockets of a process, as "tcp:PORT" or "udp:PORT", from /proc.
func listeningSockets(t *testing.T, pid int) []string {
	t.Helper()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Skipf("cannot read the node's file descriptors: %v", err)
	}
	inodes := map[string]bool{}
	for _, fd := range fds {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(target, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]")] = true
		}
	}

	var found []string
	for _, table := range []string{"tcp", "tcp6", "udp", "udp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || !inodes[fields[9]] {
				continue
			}
			local, remote, state := fields[1], fields[2], fields[3]
			isTCP := strings.HasPrefix(table, "tcp")
			// 0A is TCP_LISTEN. A UDP socket with no remote address is
			// bound to receive from anyone, as a QUIC listener is.
			if isTCP && state != "0A" || !isTCP && !strings.HasSuffix(remote, ":0000") {
				continue
			}
			portHex := local[strings.LastIndex(local, ":")+1:]
			p, err := strconv.ParseUint(portHex, 16, 16)
			if err != nil {
				t.Fatal(err)
			}
			found = append(found, fmt.Sprintf("%s:%d", table[:3], p))
		}
		f.Close()
	}
	return found
}
