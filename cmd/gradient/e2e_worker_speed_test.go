package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/gradient-ci/gradient/web"
)

// TestWorkerSpeedListed registers a worker with --speed, changes it with
// set-speed, and checks that `gradient worker list` shows each speed and
// the in-process worker's --worker-speed.
func TestWorkerSpeedListed(t *testing.T) {
	requireNix(t)
	n := startNode(t, filepath.Join(t.TempDir(), "data"), storeDir(t, "store"), "--worker-speed", "1.5")

	n.mustCLI("worker", "register", "fast", "--speed", "2.5")
	speeds := func() map[string]float64 {
		var ws []web.WorkerInfo
		decodeJSON(t, n.mustCLI("worker", "list", "--json"), &ws)
		out := map[string]float64{}
		for _, w := range ws {
			out[w.Name] = w.Speed
		}
		return out
	}
	got := speeds()
	if got["fast"] != 2.5 {
		t.Errorf("listed speed of fast = %v, want 2.5", got["fast"])
	}
	if got["local"] != 1.5 {
		t.Errorf("listed speed of local = %v, want 1.5 from --worker-speed", got["local"])
	}

	table := n.mustCLI("worker", "list")
	if !strings.Contains(table, "SPEED") {
		t.Errorf("worker list has no SPEED column:\n%s", table)
	}
	for _, line := range strings.Split(table, "\n") {
		if strings.HasPrefix(line, "fast ") && !strings.Contains(line, " 2.5 ") {
			t.Errorf("worker list row of fast does not show 2.5: %q", line)
		}
	}

	n.mustCLI("worker", "set-speed", "fast", "3")
	if got := speeds()["fast"]; got != 3 {
		t.Errorf("listed speed of fast after set-speed = %v, want 3", got)
	}

	_, stderr, code := n.cli("worker", "register", "zero", "--speed", "0")
	if code == 0 || !strings.Contains(stderr, "--speed 0 is out of range") {
		t.Errorf("register --speed 0: exit %d, stderr %q, want a failure naming --speed", code, stderr)
	}
	_, stderr, code = n.cli("worker", "set-speed", "local", "2")
	if code == 0 || !strings.Contains(stderr, "--worker-speed") {
		t.Errorf("set-speed local: exit %d, stderr %q, want a failure pointing to --worker-speed", code, stderr)
	}
}
