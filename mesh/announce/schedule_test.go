package announce

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/mesh/internal/scripttest"
)

// epoch is time zero of the scripts; "at=90s" means epoch plus 90 seconds.
var epoch = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// TestScript runs testdata/schedule.txt. Commands:
//
//	new lifetime=D [reannounce=D] [batch=N] [retry=D]
//	add KEY... at=D       prints the keys that were new
//	remove KEY...
//	next at=D             prints the batch
//	done KEY... at=D
//	failed KEY... at=D
//	state at=D            prints len, in flight, overdue and next due
func TestScript(t *testing.T) {
	var s *Schedule

	scripttest.Run(t, "testdata/schedule.txt", func(t *testing.T, c *scripttest.Command) string {
		at := func() time.Time { return epoch.Add(duration(t, c, "at")) }

		switch c.Name {
		case "new":
			cfg := Config{
				RecordLifetime: duration(t, c, "lifetime"),
				Reannounce:     duration(t, c, "reannounce"),
				RetryDelay:     duration(t, c, "retry"),
			}
			if v, ok := c.Option("batch"); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("%s: batch=%q: %v", c.Pos, v, err)
				}
				cfg.BatchSize = n
			}
			var err error
			s, err = New(cfg)
			if err != nil {
				return "error: " + err.Error()
			}
			got := s.Config()
			return fmt.Sprintf("reannounce=%s batch=%d retry=%s", got.Reannounce, got.BatchSize, got.RetryDelay)
		case "add":
			var added []string
			for _, key := range c.Args {
				if s.Add(key, at()) {
					added = append(added, key)
				}
			}
			return "added " + strings.Join(added, " ")
		case "remove":
			for _, key := range c.Args {
				s.Remove(key)
			}
			return "ok"
		case "next":
			return "batch " + strings.Join(s.Next(at()), " ")
		case "done":
			for _, key := range c.Args {
				s.Done(key, at())
			}
			return "ok"
		case "failed":
			for _, key := range c.Args {
				s.Failed(key, at())
			}
			return "ok"
		case "state":
			due := "none"
			if d, ok := s.NextDue(); ok {
				due = d.Sub(epoch).String()
			}
			return fmt.Sprintf("len=%d in_flight=%d overdue=%d next_due=%s", s.Len(), s.InFlight(), s.Overdue(at()), due)
		}

		t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
		return ""
	})
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

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"lifetime only", Config{RecordLifetime: time.Hour}, true},
		{"no lifetime", Config{}, false},
		{"reannounce equal to lifetime", Config{RecordLifetime: time.Hour, Reannounce: time.Hour}, false},
		{"reannounce longer than lifetime", Config{RecordLifetime: time.Hour, Reannounce: 2 * time.Hour}, false},
		{"negative batch", Config{RecordLifetime: time.Hour, BatchSize: -1}, false},
		{"negative retry", Config{RecordLifetime: time.Hour, RetryDelay: -time.Second}, false},
	}

	for _, tt := range tests {
		err := tt.cfg.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("Validate(%s) = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("Validate(%s) = %v, want it to wrap ErrInvalidConfig", tt.name, err)
		}
	}
}

// TestKeepsUpWith100kKeys announces 100,000 keys in batches, as a node
// with a large cache does, and checks that none becomes overdue when each
// batch takes one second and the lifetime is an hour.
func TestKeepsUpWith100kKeys(t *testing.T) {
	s, err := New(Config{RecordLifetime: time.Hour, BatchSize: 1000})
	if err != nil {
		t.Fatal(err)
	}

	now := epoch
	for i := range 100_000 {
		s.Add(fmt.Sprintf("key-%06d", i), now)
	}

	announced := 0
	for end := epoch.Add(3 * time.Hour); now.Before(end); now = now.Add(time.Second) {
		for _, key := range s.Next(now) {
			s.Done(key, now)
			announced++
		}

		// Overdue is linear in the number of keys, so check it once a
		// minute to keep the test fast.
		if now.Sub(epoch)%time.Minute != 0 {
			continue
		}
		if n := s.Overdue(now); n != 0 {
			t.Fatalf("Overdue(%s) = %d, want 0", now.Sub(epoch), n)
		}
	}

	// Every key is announced at 0-100s, then every 30 minutes: 6 or 7
	// times in 3 hours.
	if announced < 600_000 || announced > 700_000 {
		t.Errorf("announcements in 3h = %d, want 600,000 to 700,000", announced)
	}
}
