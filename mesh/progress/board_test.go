package progress

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/mesh/internal/scripttest"
)

// epoch is time zero of the scripts; "at=90s" means epoch plus 90 seconds.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestScript runs testdata/board.txt. Commands:
//
//	start PEER DRV eta=D expires=D at=D   prints whether the build is new
//	end PEER DRV OUTCOME
//	gone PEER
//	expire at=D
//	building DRV at=D
func TestScript(t *testing.T) {
	b := NewBoard()

	scripttest.Run(t, "testdata/board.txt", func(t *testing.T, c *scripttest.Command) string {
		at := func(name string) time.Time { return epoch.Add(duration(t, c, name)) }
		arg := func(i int) string {
			if i >= len(c.Args) {
				t.Fatalf("%s: %s needs %d arguments", c.Pos, c.Name, i+1)
			}
			return c.Args[i]
		}

		switch c.Name {
		case "start":
			build := Build{Peer: arg(0), DrvPath: arg(1), ETA: at("eta"), Expires: at("expires")}
			return fmt.Sprintf("new=%v len=%d", b.Start(build, at("at")), b.Len())
		case "end":
			e, ok := b.End(arg(0), arg(1), Outcome(arg(2)))
			if !ok {
				return "unknown"
			}
			return formatEnded([]Ended{e})
		case "gone":
			return formatEnded(b.PeerGone(arg(0)))
		case "expire":
			return formatEnded(b.Expire(at("at")))
		case "building":
			var lines []string
			for _, build := range b.Building(arg(0), at("at")) {
				lines = append(lines, fmt.Sprintf("%s eta=%s", build.Peer, build.ETA.Sub(epoch)))
			}
			if len(lines) == 0 {
				return "none"
			}
			return strings.Join(lines, "\n")
		}

		t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
		return ""
	})
}

func formatEnded(ended []Ended) string {
	if len(ended) == 0 {
		return "none"
	}
	var lines []string
	for _, e := range ended {
		lines = append(lines, fmt.Sprintf("%s %s %s", e.Peer, e.DrvPath, e.Outcome))
	}
	return strings.Join(lines, "\n")
}

func duration(t *testing.T, c *scripttest.Command, key string) time.Duration {
	v, ok := c.Option(key)
	if !ok {
		return 0
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %s=%q: %v", c.Pos, key, v, err)
	}
	return d
}
