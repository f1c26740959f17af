package cmd

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/worker"
	"github.com/gradient-ci/gradient/web"
)

func TestCheckServerURL(t *testing.T) {
	cases := []struct {
		server string
		valid  bool
	}{
		{"http://127.0.0.1:3000", true},
		{"https://node.example:443/", true},
		{"http://node/gradient", true},
		{"127.0.0.1:3000", false},
		{"node:3000", false},
		{"ftp://node:3000", false},
		{"ws://node:3000", false},
		{"http://", false},
		{"http://node?x=1", false},
		{"http://node#top", false},
		{"", false},
	}
	for _, c := range cases {
		err := checkServerURL(c.server)
		if got := err == nil; got != c.valid {
			t.Errorf("checkServerURL(%q) = %v, want valid %v", c.server, err, c.valid)
		}
		if err != nil && !strings.Contains(err.Error(), "--server") {
			t.Errorf("checkServerURL(%q) = %q, want the flag named", c.server, err)
		}
	}
}

func TestWorkerListColumns(t *testing.T) {
	until := time.Date(2026, 12, 4, 23, 17, 48, 500, time.UTC)
	cases := []struct {
		name      string
		w         web.WorkerInfo
		wantState string
		wantJobs  string
	}{
		{"connected", web.WorkerInfo{State: web.WorkerConnected, MaxJobs: 4, RunningJobs: 1}, "connected", "1/4"},
		{"away", web.WorkerInfo{State: web.WorkerAway, AwayUntil: &until}, "away until 23:17:48Z", "0"},
		{"disconnected", web.WorkerInfo{State: web.WorkerDisconnected}, "disconnected", "0"},
	}
	for _, c := range cases {
		if got := workerState(c.w); got != c.wantState {
			t.Errorf("workerState(%s) = %q, want %q", c.name, got, c.wantState)
		}
		if got := workerJobs(c.w); got != c.wantJobs {
			t.Errorf("workerJobs(%s) = %q, want %q", c.name, got, c.wantJobs)
		}
	}
}

func TestCheckWorkerConfig(t *testing.T) {
	nixPath := filepath.Join(t.TempDir(), "nix")
	if err := os.WriteFile(nixPath, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	valid := func() worker.RemoteConfig {
		var cfg worker.RemoteConfig
		cfg.Worker.MaxJobs = 1
		cfg.Worker.NixBinary = nixPath
		return cfg
	}

	cases := []struct {
		name     string
		change   func(*worker.RemoteConfig)
		wantFlag string
	}{
		{"defaults", func(*worker.RemoteConfig) {}, ""},
		{"absolute store", func(c *worker.RemoteConfig) { c.Worker.StoreDir = "/var/lib/gradient/store" }, ""},
		{"max jobs 0", func(c *worker.RemoteConfig) { c.Worker.MaxJobs = 0 }, "--max-jobs"},
		{"max jobs 1025", func(c *worker.RemoteConfig) { c.Worker.MaxJobs = 1025 }, "--max-jobs"},
		{"relative store", func(c *worker.RemoteConfig) { c.Worker.StoreDir = "store" }, "--store"},
		{"missing nix", func(c *worker.RemoteConfig) { c.Worker.NixBinary = filepath.Join(t.TempDir(), "missing", "nix") }, "--nix"},
	}
	for _, c := range cases {
		cfg := valid()
		c.change(&cfg)
		err := checkWorkerConfig(cfg)
		if c.wantFlag == "" {
			if err != nil {
				t.Errorf("checkWorkerConfig(%s) = %v, want nil", c.name, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), c.wantFlag) {
			t.Errorf("checkWorkerConfig(%s) = %v, want an error naming %s", c.name, err, c.wantFlag)
		}
	}
}
