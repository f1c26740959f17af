package cmd

import (
	"strings"
	"testing"
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
