package narinfo

import (
	"encoding/json"
	"errors"
	"path"
	"strings"
	"testing"
)

// testdata/ca-paths.json is the output of nix path-info --json of nix 2.8
// (without registrationTime) for content-addressed paths that nix 2.8
// added to a chroot store:
//
//	nix-store --add-fixed sha256 hello.txt            fixed:sha256
//	nix-store --add-fixed sha1 hello.txt              fixed:sha1
//	nix-store --add-fixed --recursive sha256 srcdir   fixed:r:sha256
//	nix-store --add-fixed --recursive sha1 srcdir     fixed:r:sha1
//	builtins.toFile "greeting" "hello\n"              text:sha256
//	builtins.toFile "with-ref" "see ${greeting}"      text:sha256, one reference
//
// hello.txt holds "hello\n", and srcdir holds one file x with "x".

// caPath is one entry of nix path-info --json of nix 2.8.
type caPath struct {
	Path       string   `json:"path"`
	NarHash    string   `json:"narHash"`
	NarSize    uint64   `json:"narSize"`
	References []string `json:"references"`
	CA         string   `json:"ca"`
}

func (p caPath) narInfo(t *testing.T) *NarInfo {
	t.Helper()

	narHash, err := ParseHash(p.NarHash)
	if err != nil {
		t.Fatalf("ParseHash(%q): %v", p.NarHash, err)
	}

	info := &NarInfo{StorePath: p.Path, NarHash: narHash, NarSize: p.NarSize, CA: p.CA}
	for _, ref := range p.References {
		info.References = append(info.References, path.Base(ref))
	}

	return info
}

// loadCAPaths returns the paths of testdata/ca-paths.json by CA method,
// such as "fixed:sha256" or "text:sha256 with reference".
func loadCAPaths(t *testing.T) map[string]caPath {
	t.Helper()

	var list []caPath
	if err := json.Unmarshal(readTestdata(t, "ca-paths.json"), &list); err != nil {
		t.Fatal(err)
	}

	paths := map[string]caPath{}

	for _, p := range list {
		method := p.CA[:strings.LastIndex(p.CA, ":")]
		if len(p.References) > 0 {
			method += " with reference"
		}

		paths[method] = p
	}

	for _, want := range []string{"fixed:sha256", "fixed:sha1", "fixed:r:sha256", "fixed:r:sha1", "text:sha256", "text:sha256 with reference"} {
		if _, ok := paths[want]; !ok {
			t.Fatalf("testdata/ca-paths.json has no %s path", want)
		}
	}

	return paths
}

func TestCheckContentAddressNixPaths(t *testing.T) {
	for method, p := range loadCAPaths(t) {
		if err := CheckContentAddress(p.narInfo(t)); err != nil {
			t.Errorf("CheckContentAddress(%s %s) = %v, want nil", method, p.Path, err)
		}
	}
}

func TestCheckContentAddressRejects(t *testing.T) {
	paths := loadCAPaths(t)
	greeting := path.Base(paths["text:sha256"].Path)

	tests := []struct {
		name   string
		method string
		modify func(info *NarInfo)
	}{
		{name: "flat with another name", method: "fixed:sha256", modify: func(info *NarInfo) {
			info.StorePath = strings.Replace(info.StorePath, "hello.txt", "hello.text", 1)
		}},
		{name: "flat with a reference", method: "fixed:sha256", modify: func(info *NarInfo) {
			info.References = []string{greeting}
		}},
		{name: "flat read as recursive", method: "fixed:sha256", modify: func(info *NarInfo) {
			info.CA = strings.Replace(info.CA, "fixed:", "fixed:r:", 1)
		}},
		{name: "flat sha1 read as sha256", method: "fixed:sha1", modify: func(info *NarInfo) {
			info.CA = paths["fixed:sha256"].CA
		}},
		{name: "recursive sha1 read as flat", method: "fixed:r:sha1", modify: func(info *NarInfo) {
			info.CA = strings.Replace(info.CA, "fixed:r:", "fixed:", 1)
		}},
		{name: "recursive with another NarHash", method: "fixed:r:sha256", modify: func(info *NarInfo) {
			info.NarHash = paths["text:sha256"].narInfo(t).NarHash
		}},
		{name: "text read as flat", method: "text:sha256", modify: func(info *NarInfo) {
			info.CA = strings.Replace(info.CA, "text:", "fixed:", 1)
		}},
		{name: "text without its reference", method: "text:sha256 with reference", modify: func(info *NarInfo) {
			info.References = nil
		}},
		{name: "text with an added reference", method: "text:sha256", modify: func(info *NarInfo) {
			info.References = []string{path.Base(paths["fixed:sha256"].Path)}
		}},
		{name: "text with a self-reference", method: "text:sha256", modify: func(info *NarInfo) {
			info.References = []string{greeting}
		}},
		{name: "text with sha1", method: "text:sha256", modify: func(info *NarInfo) {
			info.CA = strings.Replace(paths["fixed:sha1"].CA, "fixed:", "text:", 1)
		}},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info := paths[tt.method].narInfo(t)
			tt.modify(info)

			err := CheckContentAddress(info)
			if !errors.Is(err, ErrNotContentAddressed) {
				t.Errorf("CheckContentAddress(%s) = %v, want an error wrapping ErrNotContentAddressed", tt.name, err)
			}
		})
	}
}
