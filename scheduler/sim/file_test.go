package sim

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadGraphRoundTrip(t *testing.T) {
	g, err := Generate("layered", 200, 5)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteGraph(&buf, g); err != nil {
		t.Fatal(err)
	}

	loaded, err := LoadGraph(&buf)
	if err != nil {
		t.Fatalf("LoadGraph = %v", err)
	}
	if len(loaded.Derivations) != len(g.Derivations) {
		t.Fatalf("LoadGraph = %d derivations, want %d", len(loaded.Derivations), len(g.Derivations))
	}
	for i, n := range loaded.Derivations {
		want := g.Derivations[i]
		if n.DrvPath != want.DrvPath || n.BuildTime != want.BuildTime || n.OutputSize != want.OutputSize || len(n.Inputs) != len(want.Inputs) {
			t.Errorf("LoadGraph derivation %d = %+v, want %+v", i, n, want)
		}
	}
}

func TestLoadGraphTestdata(t *testing.T) {
	g, err := ReadGraphFile(filepath.Join("testdata", "small.json"))
	if err != nil {
		t.Fatalf("ReadGraphFile = %v", err)
	}

	// The file lists app before its inputs: the loader orders inputs first.
	order := make(map[string]int)
	for i, n := range g.Derivations {
		order[n.DrvPath] = i
	}
	app := g.Derivations[order["/nix/store/ccc-app-1.0.drv"]]
	if len(app.Inputs) != 2 {
		t.Fatalf("app inputs = %v, want 2", app.Inputs)
	}
	for _, in := range app.Inputs {
		if in >= order["/nix/store/ccc-app-1.0.drv"] {
			t.Errorf("app input %d comes after app", in)
		}
	}
	if g.Derivations[order["/nix/store/ddd-docs.drv"]].BuildTime != typicalTime {
		t.Errorf("BuildTime without build_time_s = %v, want %v", g.Derivations[order["/nix/store/ddd-docs.drv"]].BuildTime, typicalTime)
	}
}

func TestLoadGraphInvalid(t *testing.T) {
	tests := []struct {
		name, json, want string
	}{
		{"not json", `{`, "unexpected end"},
		{"no derivations", `{"derivations": []}`, "derivations is empty"},
		{"empty drv_path", `{"derivations": [{"system": "x"}]}`, "drv_path is empty"},
		{"empty system", `{"derivations": [{"drv_path": "a"}]}`, "system of"},
		{"negative build time", `{"derivations": [{"drv_path": "a", "system": "x", "build_time_s": -1}]}`, "build_time_s"},
		{"duplicate", `{"derivations": [{"drv_path": "a", "system": "x"}, {"drv_path": "a", "system": "x"}]}`, "appears twice"},
		{"missing input", `{"derivations": [{"drv_path": "a", "system": "x", "input_drvs": ["b"]}]}`, "missing from derivations"},
		{"self input", `{"derivations": [{"drv_path": "a", "system": "x", "input_drvs": ["a"]}]}`, "depends on itself"},
		{"cycle", `{"derivations": [{"drv_path": "a", "system": "x", "input_drvs": ["b"]}, {"drv_path": "b", "system": "x", "input_drvs": ["a"]}]}`, "cycle"},
		{"long path", `{"derivations": [{"drv_path": "` + strings.Repeat("a", maxStringLength+1) + `", "system": "x"}]}`, "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadGraph(strings.NewReader(tt.json))
			if !errors.Is(err, ErrInvalidGraphFile) {
				t.Fatalf("LoadGraph(%s) = %v, want ErrInvalidGraphFile", tt.name, err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("LoadGraph(%s) = %q, want it to contain %q", tt.name, err, tt.want)
			}
		})
	}
}

// A cached derivation's inputs are never built, so they may be missing.
func TestLoadGraphCachedInputs(t *testing.T) {
	g, err := LoadGraph(strings.NewReader(`{"derivations": [{"drv_path": "a", "cached": true, "input_drvs": ["gone"]}]}`))
	if err != nil {
		t.Fatalf("LoadGraph = %v", err)
	}
	if len(g.Derivations) != 1 || len(g.Derivations[0].Inputs) != 0 {
		t.Errorf("LoadGraph = %+v, want one derivation without inputs", g.Derivations)
	}
}

func FuzzLoadGraph(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		f.Fatal(err)
	}
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"derivations": [{"drv_path": "a", "system": "x", "input_drvs": ["b"]}, {"drv_path": "b", "system": "x"}]}`))

	f.Fuzz(func(t *testing.T, data []byte) {
		g, err := LoadGraph(bytes.NewReader(data))
		if err != nil {
			if !errors.Is(err, ErrInvalidGraphFile) {
				t.Fatalf("LoadGraph = %v, want an error wrapping ErrInvalidGraphFile", err)
			}
			return
		}

		// A loaded graph lists inputs first and can be written and loaded
		// again.
		for i, n := range g.Derivations {
			for _, in := range n.Inputs {
				if in < 0 || in >= i {
					t.Fatalf("derivation %d has input %d, not before it", i, in)
				}
			}
		}
		var buf bytes.Buffer
		if err := WriteGraph(&buf, g); err != nil {
			t.Fatal(err)
		}
		again, err := LoadGraph(&buf)
		if err != nil {
			t.Fatalf("LoadGraph(WriteGraph(g)) = %v", err)
		}
		if len(again.Derivations) != len(g.Derivations) {
			t.Fatalf("LoadGraph(WriteGraph(g)) = %d derivations, want %d", len(again.Derivations), len(g.Derivations))
		}
	})
}
