package node

import (
	"context"
	"errors"
	"maps"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/gradient-ci/gradient/internal/db"
	"github.com/gradient-ci/gradient/protocol"
	"github.com/gradient-ci/gradient/scheduler"
)

func TestParseProjectShare(t *testing.T) {
	tests := []struct {
		in          string
		wantProject string
		wantShare   float64
		wantErr     string
	}{
		{in: "acme/web=3", wantProject: "acme/web", wantShare: 3},
		{in: "acme/web=0.25", wantProject: "acme/web", wantShare: 0.25},
		{in: "acme/web", wantErr: "it has no '='"},
		{in: "acme=3", wantErr: `project "acme" has no '/'`},
		{in: "acme/we b=3", wantErr: `project "acme/we b": project name "we b" has an invalid character ' '`},
		{in: "/web=3", wantErr: `project "/web": organisation name is empty`},
		{in: "acme/web=many", wantErr: `share "many" of acme/web is not a number`},
		{in: "acme/web=0", wantErr: "share of acme/web: 0 is out of range: give a share from 0.001 to 1000"},
		{in: "acme/web=-2", wantErr: "share of acme/web: -2 is out of range"},
		{in: "acme/web=NaN", wantErr: "share of acme/web: NaN is out of range"},
		{in: "acme/web=+Inf", wantErr: "share of acme/web: +Inf is out of range"},
	}
	for _, tt := range tests {
		project, share, err := ParseProjectShare(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseProjectShare(%q) = %v, want an error containing %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || project != tt.wantProject || share != tt.wantShare {
			t.Errorf("ParseProjectShare(%q) = %q, %v, %v, want %q, %v", tt.in, project, share, err, tt.wantProject, tt.wantShare)
		}
	}
}

func TestParseFetchBandwidth(t *testing.T) {
	tests := []struct {
		in      string
		want    float64
		wantErr string
	}{
		{in: DefaultFetchBandwidth, want: scheduler.DefaultFetchBandwidth},
		{in: "100MB", want: 100e6},
		{in: "1GiB/s", want: 1 << 30},
		{in: "125000000", want: 125e6},
		{in: "12.5MB/s", want: 12.5e6},
		{in: "1Gb/s", wantErr: "is in bits"},
		{in: "0", wantErr: "is not a bandwidth"},
		{in: "fast", wantErr: `"fast" is not a bandwidth`},
		{in: "", wantErr: "is not a bandwidth"},
	}
	for _, tt := range tests {
		got, err := ParseFetchBandwidth(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseFetchBandwidth(%q) = %v, %v, want an error containing %q", tt.in, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("ParseFetchBandwidth(%q) = %v, %v, want %v", tt.in, got, err, tt.want)
		}
	}
}

func TestParseSchedulerPolicy(t *testing.T) {
	for _, p := range scheduler.Policies {
		if got, err := ParseSchedulerPolicy(string(p)); err != nil || got != p {
			t.Errorf("ParseSchedulerPolicy(%q) = %q, %v, want %q", p, got, err, p)
		}
	}
	if _, err := ParseSchedulerPolicy("Hydra"); err == nil || !strings.Contains(err.Error(), "give gradient, hydra or fifo") {
		t.Errorf("ParseSchedulerPolicy(Hydra) = %v, want an error listing the policies", err)
	}
}

func TestParseConfigFileScheduler(t *testing.T) {
	c, err := ParseConfigFile("s.toml", []byte(`
worker_speed = 1.5

[scheduler]
policy = "hydra"
fetch_bandwidth = "50MB/s"
max_attempts = 5
default_build_time = "2m"

[scheduler.project_shares]
"acme/web" = 3
"acme/docs" = 0.5
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.WorkerSpeed == nil || *c.WorkerSpeed != 1.5 {
		t.Errorf("WorkerSpeed = %v, want 1.5", c.WorkerSpeed)
	}
	if c.SchedulerPolicy == nil || *c.SchedulerPolicy != scheduler.PolicyHydra {
		t.Errorf("SchedulerPolicy = %v, want hydra", c.SchedulerPolicy)
	}
	if c.SchedulerFetchBandwidth == nil || *c.SchedulerFetchBandwidth != 50e6 {
		t.Errorf("SchedulerFetchBandwidth = %v, want 50e6", c.SchedulerFetchBandwidth)
	}
	if c.SchedulerMaxAttempts == nil || *c.SchedulerMaxAttempts != 5 {
		t.Errorf("SchedulerMaxAttempts = %v, want 5", c.SchedulerMaxAttempts)
	}
	if c.SchedulerDefaultBuildTime == nil || *c.SchedulerDefaultBuildTime != 2*time.Minute {
		t.Errorf("SchedulerDefaultBuildTime = %v, want 2m", c.SchedulerDefaultBuildTime)
	}
	wantShares := map[string]float64{"acme/web": 3, "acme/docs": 0.5}
	if !maps.Equal(c.SchedulerProjectShares, wantShares) {
		t.Errorf("SchedulerProjectShares = %v, want %v", c.SchedulerProjectShares, wantShares)
	}
}

func TestParseConfigFileSchedulerUnset(t *testing.T) {
	c, err := ParseConfigFile("s.toml", []byte("[scheduler]\nfetch_bandwidth = 125000000\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.SchedulerFetchBandwidth == nil || *c.SchedulerFetchBandwidth != 125e6 {
		t.Errorf("SchedulerFetchBandwidth = %v, want 125e6 from an integer", c.SchedulerFetchBandwidth)
	}
	if c.SchedulerPolicy != nil || c.SchedulerMaxAttempts != nil || c.SchedulerDefaultBuildTime != nil || c.SchedulerProjectShares != nil || c.WorkerSpeed != nil {
		t.Errorf("ParseConfigFile(fetch_bandwidth only) set other keys: %+v", c)
	}
}

func TestParseConfigFileSchedulerRejects(t *testing.T) {
	tests := []struct {
		name string
		data string
		want string // a part of the error after "config s.toml: "
	}{
		{"unknown key", "[scheduler]\npolicies = \"hydra\"", "scheduler.policies: unknown key"},
		{"policy", "[scheduler]\npolicy = \"lifo\"", `scheduler.policy: "lifo" is not a policy: give gradient, hydra or fifo`},
		{"share zero", "[scheduler.project_shares]\n\"acme/web\" = 0", `scheduler.project_shares."acme/web": 0 is out of range: give a share from 0.001 to 1000`},
		{"share negative", "[scheduler.project_shares]\n\"acme/web\" = -1.5", `scheduler.project_shares."acme/web": -1.5 is out of range`},
		{"share infinite", "[scheduler.project_shares]\n\"acme/web\" = inf", `scheduler.project_shares."acme/web": +Inf is out of range`},
		{"share string", "[scheduler.project_shares]\n\"acme/web\" = \"3\"", `scheduler.project_shares."acme/web": has TOML type string: give a number`},
		{"share without org", "[scheduler.project_shares]\nweb = 3", `scheduler.project_shares."web": project "web" has no '/'`},
		{"bandwidth zero", "[scheduler]\nfetch_bandwidth = 0", "scheduler.fetch_bandwidth: 0 is not positive"},
		{"bandwidth bits", "[scheduler]\nfetch_bandwidth = \"1Gb/s\"", `scheduler.fetch_bandwidth: "1Gb/s" is in bits`},
		{"bandwidth float", "[scheduler]\nfetch_bandwidth = 1.5", "scheduler.fetch_bandwidth: has TOML type float64"},
		{"max attempts", "[scheduler]\nmax_attempts = 0", "scheduler.max_attempts: 0 is out of range: give 1 or more"},
		{"default build time short", "[scheduler]\ndefault_build_time = \"10us\"", `scheduler.default_build_time: "10us" is invalid: give a duration of 1ms or more`},
		{"default build time unit", "[scheduler]\ndefault_build_time = \"60\"", `scheduler.default_build_time: "60" is invalid`},
		{"worker speed zero", "worker_speed = 0", "worker_speed: 0 is out of range: give a speed from 0.001 to 1000"},
		{"worker speed nan", "worker_speed = nan", "worker_speed: NaN is out of range"},
		{"worker speed tiny", "worker_speed = 1e-320", "worker_speed: 1e-320 is out of range"},
		{"share huge", "[scheduler.project_shares]\n\"acme/web\" = 1e308", `scheduler.project_shares."acme/web": 1e+308 is out of range`},
		{"worker speed string", `worker_speed = "fast"`, "worker_speed: has TOML type string: give a number"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseConfigFile("s.toml", []byte(tt.data))
			if err == nil {
				t.Fatalf("ParseConfigFile(%q) = nil error, want %q", tt.data, tt.want)
			}
			if !errors.Is(err, ErrConfigFile) {
				t.Errorf("ParseConfigFile(%q) = %v, want an error wrapping ErrConfigFile", tt.data, err)
			}
			if want := "config s.toml: " + tt.want; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("ParseConfigFile(%q) = %q, want it to start with %q", tt.data, err, want)
			}
		})
	}
}

func TestConfigValidateScheduler(t *testing.T) {
	valid := Config{
		WorkerSpeed: 2,
		Scheduler:   scheduler.Config{Policy: scheduler.PolicyFIFO, ProjectShares: map[string]float64{"acme/web": 2}},
	}.withDefaults()
	if err := valid.validate(); err != nil {
		t.Errorf("validate(fifo, share 2, speed 2) = %v, want nil", err)
	}
	if got := (Config{}).withDefaults().WorkerSpeed; got != 1 {
		t.Errorf("default WorkerSpeed = %v, want 1", got)
	}

	tests := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"policy", func(c *Config) { c.Scheduler.Policy = "lifo" }, `Policy "lifo" is not one of`},
		{"share value", func(c *Config) { c.Scheduler.ProjectShares = map[string]float64{"acme/web": -1} }, `ProjectShares["acme/web"] -1 is not in [0.001, 1000]`},
		{"share key", func(c *Config) { c.Scheduler.ProjectShares = map[string]float64{"web": 1} }, `scheduler project shares: project "web" has no '/'`},
		{"worker speed", func(c *Config) { c.WorkerSpeed = math.Inf(1) }, "worker speed +Inf is out of range"},
	}
	for _, tt := range tests {
		c := Config{}.withDefaults()
		tt.edit(&c)
		if err := c.validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("validate(%s) = %v, want an error containing %q", tt.name, err, tt.want)
		}
	}
}

func TestSchedulerConfigReachesScheduler(t *testing.T) {
	want := scheduler.Config{
		Policy:           scheduler.PolicyHydra,
		ProjectShares:    map[string]float64{"demo/web": 3},
		FetchBandwidth:   5e6,
		MaxAttempts:      7,
		DefaultBuildTime: 10 * time.Second,
		JobIDPrefix:      "ignored-",
	}
	h := newHarness(t, driverConfig{Scheduler: want})

	var got scheduler.Config
	h.run(func(ctx context.Context) { got = h.drv.sched.Config() })
	if got.Policy != want.Policy {
		t.Errorf("Policy = %q, want %q", got.Policy, want.Policy)
	}
	if !maps.Equal(got.ProjectShares, want.ProjectShares) {
		t.Errorf("ProjectShares = %v, want %v", got.ProjectShares, want.ProjectShares)
	}
	if got.FetchBandwidth != want.FetchBandwidth {
		t.Errorf("FetchBandwidth = %v, want %v", got.FetchBandwidth, want.FetchBandwidth)
	}
	if got.MaxAttempts != want.MaxAttempts {
		t.Errorf("MaxAttempts = %d, want %d", got.MaxAttempts, want.MaxAttempts)
	}
	if got.DefaultBuildTime != want.DefaultBuildTime {
		t.Errorf("DefaultBuildTime = %v, want %v", got.DefaultBuildTime, want.DefaultBuildTime)
	}
	if !strings.HasPrefix(got.JobIDPrefix, "job-") {
		t.Errorf("JobIDPrefix = %q, want the node's own prefix starting with job-", got.JobIDPrefix)
	}
}

func TestSchedulerDefaultsUnchanged(t *testing.T) {
	h := newHarness(t, driverConfig{})
	var got scheduler.Config
	h.run(func(ctx context.Context) { got = h.drv.sched.Config() })
	if got.Policy != scheduler.PolicyGradient || got.FetchBandwidth != scheduler.DefaultFetchBandwidth ||
		got.MaxAttempts != scheduler.DefaultMaxAttempts || got.DefaultBuildTime != scheduler.DefaultBuildTime || len(got.ProjectShares) != 0 {
		t.Errorf("scheduler config without settings = %+v, want the scheduler's defaults", got)
	}
}

// TestWorkerSpeedReachesPlacement checks that a worker joins the
// scheduler at the speed stored in its record, which the build's
// placement shows, and at speed 1 without a record.
func TestWorkerSpeedReachesPlacement(t *testing.T) {
	tests := []struct {
		name        string
		recordSpeed float64 // 0 registers no record
		wantSpeed   float64
	}{
		{"registered fast", 2.5, 2.5},
		{"registered slow", 0.5, 0.5},
		{"without record", 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seed := func(records *db.DB) {
				if tt.recordSpeed == 0 {
					return
				}
				if _, err := records.CreateWorkerWithSpeed("w1", db.HashToken("token"), tt.recordSpeed, time.Now()); err != nil {
					t.Fatal(err)
				}
			}
			h := newHarness(t, driverConfig{Scheduler: scheduler.Config{DefaultBuildTime: 10 * time.Second}}, seed)
			graph := graphResult(testDrv{name: "one"})
			h.connect("w1", instantWorker(graph), protocol.ServeConfig{})

			id := h.evaluate("speed")
			h.waitStatus(id, db.EvalSucceeded)
			p := h.builds(id)["one"].Placement
			if p == nil {
				t.Fatal("one has no placement")
			}
			if p.Speed != tt.wantSpeed {
				t.Errorf("placement speed = %v, want %v", p.Speed, tt.wantSpeed)
			}
			if want := 10 / tt.wantSpeed; math.Abs(p.BuildSeconds-want) > 1e-9 {
				t.Errorf("placement build seconds = %v, want the default build time 10 s / speed = %v", p.BuildSeconds, want)
			}
		})
	}
}
