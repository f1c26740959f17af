package cmd

import (
	"strings"
	"testing"
	"time"

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
