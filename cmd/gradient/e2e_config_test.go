package main

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// e2eUpstreamKey is a public key in name:base64 form. The static
// upstream signs nothing, so the key only has to parse.
const e2eUpstreamKey = "cache.example.org-1:a/uEc6uyRzdabywUDGUkRl4+tjO8/qumOGnxKyY3t6c="

// startNodeWithConfig runs `gradient serve --config path` with no other
// flag and waits until it logs that it has started.
func startNodeWithConfig(t *testing.T, dataDir, path string) *node {
	t.Helper()
	n := &node{t: t, dataDir: dataDir}
	n.cmd = exec.Command(gradientBin, "serve", "--config", path)
	n.cmd.Env = append(os.Environ(), "GRADIENT_DATA_DIR=", "GRADIENT_CONFIG=")
	n.start("node", 60*time.Second)
	return n
}

func TestConfigFileUpstreams(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nix-cache-info" {
			fmt.Fprint(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n")
			return
		}
		http.NotFound(w, r)
	}))
	defer upstream.Close()

	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	configPath := filepath.Join(dir, "gradient.toml")
	config := fmt.Sprintf(`
listen = "127.0.0.1:0"
data_dir = %q
cache_key_name = "e2e-1"
no_worker = true
# Tests send no traffic off this machine.
no_default_upstream = true
log_level = "debug"

[caches.main]
priority = 30

[[caches.main.upstreams]]
url = %q
keys = [%q]
priority = 10
`, dataDir, upstream.URL, e2eUpstreamKey)
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	n := startNodeWithConfig(t, dataDir, configPath)
	var ups []struct {
		URL        string   `json:"url"`
		PublicKeys []string `json:"public_keys"`
		Priority   int      `json:"priority"`
	}
	decodeJSON(t, n.mustCLI("cache", "upstream", "list", "main", "--json"), &ups)
	if len(ups) != 1 || ups[0].URL != upstream.URL || ups[0].Priority != 10 {
		t.Fatalf("upstream list = %+v, want only %s with priority 10", ups, upstream.URL)
	}
	if out := n.mustCLI("cache", "upstream", "list", "main"); !strings.Contains(out, upstream.URL) {
		t.Errorf("upstream list = %q, want %s", out, upstream.URL)
	}
	if got := cacheInfoPriority(t, n); got != "30" {
		t.Errorf("nix-cache-info Priority = %s, want 30 from the file", got)
	}

	// Changes through the API to settings the file sets last until the
	// next start, where the file wins and the log records each replaced value.
	n.mustCLI("cache", "edit", "main", "--priority", "7")
	n.mustCLI("cache", "upstream", "add", "main", "http://127.0.0.1:9", "--key", e2eUpstreamKey)
	n.stop()

	n = startNodeWithConfig(t, dataDir, configPath)
	decodeJSON(t, n.mustCLI("cache", "upstream", "list", "main", "--json"), &ups)
	if len(ups) != 1 || ups[0].URL != upstream.URL {
		t.Errorf("upstream list after restart = %+v, want only %s", ups, upstream.URL)
	}
	if got := cacheInfoPriority(t, n); got != "30" {
		t.Errorf("nix-cache-info Priority after restart = %s, want 30 from the file", got)
	}
	log := n.logText()
	for _, want := range []string{`msg="config file replaces stored cache setting" cache=main key=priority stored=7 config=30`,
		`msg="config file removes stored upstream" cache=main url=http://127.0.0.1:9`} {
		if !strings.Contains(log, want) {
			t.Errorf("node log lacks %q", want)
		}
	}
}

// cacheInfoPriority returns the Priority field of the node's
// nix-cache-info.
func cacheInfoPriority(t *testing.T, n *node) string {
	t.Helper()
	resp, err := http.Get(n.cacheURL() + "/nix-cache-info")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := readAll(t, resp.Body)
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, "Priority: "); ok {
			return v
		}
	}
	t.Fatalf("nix-cache-info %q has no Priority", body)
	return ""
}

func TestConfigFileInvalidStopsStart(t *testing.T) {
	dir := t.TempDir()
	dataDir := filepath.Join(dir, "data")
	configPath := filepath.Join(dir, "gradient.toml")
	config := fmt.Sprintf("data_dir = %q\nno_default_upstream = true\n\n[[caches.main.upstreams]]\nurl = \"http://127.0.0.1:9\"\nkeys = [\"no-colon\"]\n", dataDir)
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(gradientBin, "serve", "--config", configPath)
	cmd.Env = append(os.Environ(), "GRADIENT_DATA_DIR=", "GRADIENT_CONFIG=")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("serve with an invalid config file exited 0; output:\n%s", out)
	}
	want := "config " + configPath + `: caches.main.upstreams[0].keys[0]: "no-colon" is not a public key`
	if !strings.Contains(string(out), want) {
		t.Errorf("output = %q, want %q", out, want)
	}
	if _, err := os.Stat(dataDir); !os.IsNotExist(err) {
		t.Errorf("data directory exists after a rejected config file (stat: %v), want nothing created", err)
	}
}
