package db

import (
	"errors"
	"log/slog"
	"testing"
	"time"
)

func openTest(t *testing.T) *DB {
	t.Helper()
	d, err := Open(t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"demo", true},
		{"my-org.v2_x", true},
		{"", false},
		{"-leading", false},
		{"has/slash", false},
		{"has space", false},
		{"ünicode", false},
		{string(make([]byte, 65)), false},
	}
	for _, tc := range tests {
		err := ValidateName("name", tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestProjectCreateTwice(t *testing.T) {
	d := openTest(t)
	now := time.Unix(1_700_000_000, 0)
	p := Project{Org: "demo", Name: "hello", FlakeRef: "github:o/r", EntryPoints: []string{"packages.*.*"}}
	if _, err := d.CreateProject(p, now); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateProject(p, now); !errors.Is(err, ErrExists) {
		t.Errorf("second CreateProject = %v, want ErrExists", err)
	}
	orgs, err := d.ListOrgs()
	if err != nil || len(orgs) != 1 || orgs[0].Name != "demo" {
		t.Errorf("ListOrgs() = %v, %v, want [demo]", orgs, err)
	}
	if _, err := d.GetProject("demo", "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetProject(missing) = %v, want ErrNotFound", err)
	}
}

func TestEvaluationsNewestFirst(t *testing.T) {
	d := openTest(t)
	now := time.Unix(1_700_000_000, 0)
	if _, err := d.CreateProject(Project{Org: "o", Name: "p", FlakeRef: "/src"}, now); err != nil {
		t.Fatal(err)
	}
	// A second project whose name starts like the first must not leak
	// into the first one's list.
	if _, err := d.CreateProject(Project{Org: "o", Name: "p2", FlakeRef: "/src"}, now); err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	for range 3 {
		e, err := d.CreateEvaluation("o", "p", now)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, e.ID)
	}
	if _, err := d.CreateEvaluation("o", "p2", now); err != nil {
		t.Fatal(err)
	}

	es, err := d.ListEvaluations("o", "p", 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].ID != ids[2] || es[1].ID != ids[1] {
		t.Errorf("ListEvaluations(limit 2) = %v, want IDs %d, %d", es, ids[2], ids[1])
	}
	p, err := d.GetProject("o", "p")
	if err != nil || p.LastEvaluation != ids[2] {
		t.Errorf("LastEvaluation = %d, %v, want %d", p.LastEvaluation, err, ids[2])
	}
	unfinished, err := d.ListUnfinishedEvaluations()
	if err != nil || len(unfinished) != 4 {
		t.Errorf("ListUnfinishedEvaluations() = %d, %v, want 4", len(unfinished), err)
	}
	if _, err := d.CreateEvaluation("o", "missing", now); !errors.Is(err, ErrNotFound) {
		t.Errorf("CreateEvaluation(missing project) = %v, want ErrNotFound", err)
	}
}

func TestBuildsOfEvaluation(t *testing.T) {
	d := openTest(t)
	bs := []Build{{DrvPath: "/nix/store/a.drv", Status: BuildQueued}, {DrvPath: "/nix/store/b.drv", Status: BuildCached}}
	if err := d.CreateBuilds(7, bs); err != nil {
		t.Fatal(err)
	}
	if err := d.CreateBuilds(8, []Build{{DrvPath: "/nix/store/c.drv"}}); err != nil {
		t.Fatal(err)
	}
	bs[0].Status = BuildSucceeded
	if err := d.PutBuild(bs[0]); err != nil {
		t.Fatal(err)
	}

	got, err := d.ListBuilds(7)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Status != BuildSucceeded || got[1].DrvPath != "/nix/store/b.drv" || got[0].EvalID != 7 {
		t.Errorf("ListBuilds(7) = %+v, want a.drv succeeded and b.drv", got)
	}

	if err := d.DeleteBuilds(7); err != nil {
		t.Fatal(err)
	}
	if got, _ := d.ListBuilds(7); len(got) != 0 {
		t.Errorf("ListBuilds(7) after DeleteBuilds = %d builds, want 0", len(got))
	}
	if _, err := d.GetBuild(bs[0].ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("GetBuild after DeleteBuilds = %v, want ErrNotFound", err)
	}
	if got, _ := d.ListBuilds(8); len(got) != 1 {
		t.Errorf("ListBuilds(8) = %d builds, want 1", len(got))
	}
}

func TestConcurrentEvaluations(t *testing.T) {
	d := openTest(t)
	now := time.Unix(1_700_000_000, 0)
	if _, err := d.CreateProject(Project{Org: "o", Name: "p", FlakeRef: "/src"}, now); err != nil {
		t.Fatal(err)
	}

	const n = 16
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := d.CreateEvaluation("o", "p", now)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Errorf("CreateEvaluation = %v, want nil", err)
		}
	}
	es, err := d.ListEvaluations("o", "p", 0)
	if err != nil || len(es) != n {
		t.Errorf("ListEvaluations = %d, %v, want %d", len(es), err, n)
	}
}

func TestIDsContinueAfterReopen(t *testing.T) {
	dir := t.TempDir()
	d, err := Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.CreateBuilds(1, make([]Build, 3)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}

	d, err = Open(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	bs := make([]Build, 1)
	if err := d.CreateBuilds(2, bs); err != nil {
		t.Fatal(err)
	}
	if bs[0].ID != 4 {
		t.Errorf("first build ID after reopening = %d, want 4", bs[0].ID)
	}
}

func TestBuildTimeEstimatesRoundTrip(t *testing.T) {
	d := openTest(t)
	if es, err := d.BuildTimeEstimates(); err != nil || len(es) != 0 {
		t.Fatalf("BuildTimeEstimates() on a new database = %v, %v, want none", es, err)
	}
	want := []BuildTimeEstimate{
		{PName: "hello", System: "x86_64-linux", BuildTime: 90 * time.Second, Samples: 3},
		{PName: "gcc", System: "aarch64-linux", BuildTime: time.Hour, Samples: 1},
	}
	if err := d.PutBuildTimeEstimates(want); err != nil {
		t.Fatal(err)
	}
	got, err := d.BuildTimeEstimates()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("BuildTimeEstimates() = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("BuildTimeEstimates()[%d] = %+v, want %+v", i, got[i], want[i])
		}
	}
}
