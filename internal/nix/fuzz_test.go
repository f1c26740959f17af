package nix

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// addTestdata seeds f with every testdata file whose name matches glob.
func addTestdata(f *testing.F, glob string) {
	files, err := filepath.Glob(filepath.Join("testdata", glob))
	if err != nil || len(files) == 0 {
		f.Fatalf("no testdata files match %q: %v", glob, err)
	}
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

func FuzzParseFlakeMetadata(f *testing.F) {
	addTestdata(f, "metadata-*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseFlakeMetadata(data)
		if err != nil {
			return
		}
		if m.LockedURL == "" || m.OriginalURL == "" {
			t.Errorf("ParseFlakeMetadata(%q) = %+v without an error, want both URLs", data, m)
		}
		m.Locked()
		m.SnapshotURL()
	})
}

func FuzzParsePathInfo(f *testing.F) {
	addTestdata(f, "pathinfo-*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		infos, err := ParsePathInfo(data)
		if err != nil {
			return
		}
		for _, info := range infos {
			if !strings.HasPrefix(info.NarHash, "sha256-") {
				t.Errorf("ParsePathInfo(%q) gave NarHash %q, want SRI", data, info.NarHash)
			}
		}
	})
}

func FuzzParseDerivation(f *testing.F) {
	addTestdata(f, "*.drv")
	f.Fuzz(func(t *testing.T, data []byte) {
		drv, err := ParseDerivation(bytes.NewReader(data))
		if err != nil {
			return
		}
		if drv.Name == "" || len(drv.Outputs) == 0 {
			t.Errorf("ParseDerivation(%q) = %+v without an error, want a name and outputs", data, drv)
		}
	})
}

func FuzzErrorMessage(f *testing.F) {
	addTestdata(f, "errors/*.stderr")
	f.Fuzz(func(t *testing.T, data []byte) {
		if got := ErrorMessage(data); len(got) > maxMessage+len("\n[message truncated]") {
			t.Errorf("ErrorMessage gave %d bytes, want at most %d", len(got), maxMessage)
		}
	})
}

func FuzzParseVersion(f *testing.F) {
	for _, seed := range []string{"nix (Nix) 2.8.0", "nix (Lix, like Nix) 2.91.1", "nix (Nix) 2.18.1pre"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, output string) {
		ParseVersion(output)
	})
}

func FuzzParseSystemFeatures(f *testing.F) {
	addTestdata(f, "show-config-*.json")
	f.Add([]byte(`{"system-features": {"value": "kvm big-parallel"}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		features, err := ParseSystemFeatures(data)
		if err != nil {
			return
		}
		if len(features) > 64 {
			t.Errorf("ParseSystemFeatures gave %d features, want at most 64", len(features))
		}
		for _, feature := range features {
			if feature == "" || len(feature) > 256 {
				t.Errorf("ParseSystemFeatures gave feature %q, want 1 to 256 bytes", feature)
			}
		}
	})
}
