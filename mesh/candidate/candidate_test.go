package candidate

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/mesh/internal/scripttest"
)

var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestScript runs testdata/candidates.txt. Commands:
//
//	order at=D            input: one candidate a line, "PEER [lan] [rtt=D]";
//	                      prints the order after filtering blocked peers
//	block PEER... at=D [for=D]
func TestScript(t *testing.T) {
	var blocklist Blocklist

	scripttest.Run(t, "testdata/candidates.txt", func(t *testing.T, c *scripttest.Command) string {
		at := epoch.Add(duration(t, c.Pos, c.Options["at"]))

		switch c.Name {
		case "order":
			var candidates []Candidate
			for _, line := range c.Input {
				fields := strings.Fields(line)
				cand := Candidate{Peer: fields[0]}
				for _, f := range fields[1:] {
					switch {
					case f == "lan":
						cand.LAN = true
					case strings.HasPrefix(f, "rtt="):
						cand.RTT = duration(t, c.Pos, strings.TrimPrefix(f, "rtt="))
					default:
						t.Fatalf("%s: unknown candidate field %q", c.Pos, f)
					}
				}
				candidates = append(candidates, cand)
			}
			candidates = blocklist.Filter(candidates, at)
			Order(candidates)
			var peers []string
			for _, cand := range candidates {
				peers = append(peers, cand.Peer)
			}
			return "order " + strings.Join(peers, " ")
		case "block":
			if v, ok := c.Option("for"); ok {
				blocklist.Duration = duration(t, c.Pos, v)
			}
			for _, peer := range c.Args {
				blocklist.Block(peer, at)
			}
			return fmt.Sprintf("blocked=%d", blocklist.Len())
		}

		t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
		return ""
	})
}

func duration(t *testing.T, pos, v string) time.Duration {
	if v == "" {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: duration %q: %v", pos, v, err)
	}
	return d
}

func TestOrderTable(t *testing.T) {
	tests := []struct {
		name string
		in   []Candidate
		want string
	}{
		{"LAN beats faster WAN", []Candidate{{Peer: "w", RTT: time.Millisecond}, {Peer: "l", LAN: true, RTT: 9 * time.Millisecond}}, "l w"},
		{"measured beats unmeasured", []Candidate{{Peer: "u"}, {Peer: "m", RTT: time.Second}}, "m u"},
		{"ties by peer ID", []Candidate{{Peer: "b"}, {Peer: "a"}}, "a b"},
		{"empty", nil, ""},
	}

	for _, tt := range tests {
		Order(tt.in)
		var peers []string
		for _, c := range tt.in {
			peers = append(peers, c.Peer)
		}
		if got := strings.Join(peers, " "); got != tt.want {
			t.Errorf("Order(%s) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
