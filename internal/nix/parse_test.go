package nix

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden .want files in testdata/errors")

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestParseVersion(t *testing.T) {
	tests := []struct {
		output string
		want   Version
	}{
		{"nix (Nix) 2.8.0\n", Version{Implementation: "Nix", Major: 2, Minor: 8, Patch: 0, Raw: "2.8.0"}},
		{"nix (Lix, like Nix) 2.91.1", Version{Implementation: "Lix", Major: 2, Minor: 91, Patch: 1, Raw: "2.91.1"}},
		{"nix (Nix) 2.18.1pre20231201_dirty", Version{Implementation: "Nix", Major: 2, Minor: 18, Patch: 1, Raw: "2.18.1pre20231201_dirty"}},
		{"nix (Nix) 2.24", Version{Implementation: "Nix", Major: 2, Minor: 24, Raw: "2.24"}},
		{"nix (Determinate Nix 3.6.2) 2.29.0", Version{Implementation: "Determinate Nix 3.6.2", Major: 2, Minor: 29, Raw: "2.29.0"}},
		{string(readTestdata(t, "version-2.8.txt")), Version{Implementation: "Nix", Major: 2, Minor: 8, Raw: "2.8.0"}},
	}
	for _, tt := range tests {
		got, err := ParseVersion(tt.output)
		if err != nil {
			t.Errorf("ParseVersion(%q) = %v, want %+v", tt.output, err, tt.want)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseVersion(%q) = %+v, want %+v", tt.output, got, tt.want)
		}
	}

	for _, bad := range []string{"", "nix 2.8.0", "nix (Nix)", "nix (Nix) x.y"} {
		if got, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestVersionAtLeast(t *testing.T) {
	v := Version{Major: 2, Minor: 18}
	if !v.AtLeast(2, 8) || !v.AtLeast(2, 18) || v.AtLeast(2, 19) || v.AtLeast(3, 0) {
		t.Errorf("Version 2.18 AtLeast gives wrong answers")
	}
}

func TestParseFlakeMetadata(t *testing.T) {
	tests := []struct {
		file       string
		want       FlakeMetadata
		wantLocked bool
	}{
		{
			file: "metadata-2.8-path.json",
			want: FlakeMetadata{
				OriginalURL:  "path:/tmp/wk/flake",
				LockedURL:    "path:/tmp/wk/flake?lastModified=1796415277&narHash=sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c=",
				NarHash:      "sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c=",
				LastModified: 1796415277,
				Path:         "/nix/store/ks6diw22n2l4414dww55s8g14saxalnp-source",
			},
			wantLocked: true,
		},
		{
			file: "metadata-2.8-git.json",
			want: FlakeMetadata{
				OriginalURL:  "git+file:///tmp/wk/g",
				LockedURL:    "git+file:///tmp/wk/g?ref=master&rev=b975036d2aabe9dee4a2a9e1f94d652b280f38f0",
				Revision:     "b975036d2aabe9dee4a2a9e1f94d652b280f38f0",
				NarHash:      "sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c=",
				LastModified: 1796415328,
				Path:         "/nix/store/ks6diw22n2l4414dww55s8g14saxalnp-source",
			},
			wantLocked: true,
		},
		{
			file: "metadata-2.8-git-dirty.json",
			want: FlakeMetadata{
				OriginalURL:  "git+file:///tmp/wk/g",
				LockedURL:    "git+file:///tmp/wk/g",
				NarHash:      "sha256-pXUnYJS+OWyLJyCarFFWk4czqG10LAncM4H0P9kZUbw=",
				LastModified: 1796415328,
				Path:         "/nix/store/ajnv959dsjvg6wqpxgxvvjwx82q4as4i-source",
			},
			wantLocked: false,
		},
		{
			file: "metadata-2.19-github.json",
			want: FlakeMetadata{
				OriginalURL:  "github:gradient-ci/example",
				LockedURL:    "github:gradient-ci/example/0123456789abcdef0123456789abcdef01234567?narHash=sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c%3D",
				Revision:     "0123456789abcdef0123456789abcdef01234567",
				NarHash:      "sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c=",
				LastModified: 1700000000,
				Path:         "/nix/store/ks6diw22n2l4414dww55s8g14saxalnp-source",
			},
			wantLocked: true,
		},
		{
			file: "metadata-locked-only.json",
			want: FlakeMetadata{
				OriginalURL:  "git+https://example.org/repo.git",
				LockedURL:    "git+https://example.org/repo.git?rev=0123456789abcdef0123456789abcdef01234567",
				Revision:     "0123456789abcdef0123456789abcdef01234567",
				NarHash:      "sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c=",
				LastModified: 1700000001,
				Path:         "/nix/store/ks6diw22n2l4414dww55s8g14saxalnp-source",
			},
			wantLocked: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParseFlakeMetadata(readTestdata(t, tt.file))
			if err != nil {
				t.Fatalf("ParseFlakeMetadata(%s) = %v", tt.file, err)
			}
			if got != tt.want {
				t.Errorf("ParseFlakeMetadata(%s) = %+v, want %+v", tt.file, got, tt.want)
			}
			if got.Locked() != tt.wantLocked {
				t.Errorf("ParseFlakeMetadata(%s).Locked() = %v, want %v", tt.file, got.Locked(), tt.wantLocked)
			}
		})
	}

	for _, bad := range []string{`{}`, `{"url":"path:/x"}`, `[]`, `{"url":1}`, ``} {
		if got, err := ParseFlakeMetadata([]byte(bad)); err == nil {
			t.Errorf("ParseFlakeMetadata(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestSnapshotURL(t *testing.T) {
	m, err := ParseFlakeMetadata(readTestdata(t, "metadata-2.8-git-dirty.json"))
	if err != nil {
		t.Fatal(err)
	}
	got := m.SnapshotURL()
	want := "path:/nix/store/ajnv959dsjvg6wqpxgxvvjwx82q4as4i-source?lastModified=1796415328&narHash=sha256-pXUnYJS%2BOWyLJyCarFFWk4czqG10LAncM4H0P9kZUbw%3D"
	if got != want {
		t.Errorf("SnapshotURL() = %q, want %q", got, want)
	}
	if !isLockedURL(got) {
		t.Errorf("isLockedURL(%q) = false, want true", got)
	}
}

func TestParsePathInfo(t *testing.T) {
	a := PathInfo{
		StorePath:  "/nix/store/0270xr8001sp245x2qc78hqkd8ibms1g-a",
		NarHash:    "sha256-knb9U7Sdy/YWj4gjrvFIevLuTiMEt+5kEtunmYK5CoY=",
		NarSize:    120,
		References: []string{},
		Deriver:    "/nix/store/xfckwc9ps9k8ss3fm5q16pvhg2pwkjr3-a.drv",
	}
	d := PathInfo{
		StorePath:  "/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d",
		NarHash:    "sha256-/2Pl0Zy6kEQ0lA6J2MopVGhHXl/T++YUIXqnB63ShQQ=",
		NarSize:    208,
		References: []string{"/nix/store/3ag2ivjjnvkich5mnkfb7id01laijhq3-c", "/nix/store/kz9aji26frhkci53cpiwy4b4g0msyr63-b"},
		Deriver:    "/nix/store/rh4kbsc3vcv42fc4szv2sj32cn848lkd-d.drv",
	}
	aWithCA := a
	aWithCA.CA = "fixed:r:sha256:0000000000000000000000000000000000000000000000000000"

	tests := []struct {
		file string
		want []PathInfo
	}{
		{"pathinfo-2.8.json", []PathInfo{a, d}},
		{"pathinfo-2.19.json", []PathInfo{a, d}},
		{"pathinfo-nix32.json", []PathInfo{aWithCA, d}},
		{"pathinfo-2.8-invalid.json", nil},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			got, err := ParsePathInfo(readTestdata(t, tt.file))
			if err != nil {
				t.Fatalf("ParsePathInfo(%s) = %v", tt.file, err)
			}
			if !slices.EqualFunc(got, tt.want, equalPathInfo) {
				t.Errorf("ParsePathInfo(%s) = %+v, want %+v", tt.file, got, tt.want)
			}
		})
	}

	for _, bad := range []string{
		``, `"x"`, `[{"path":"/nix/store/x"}]`,
		`[{"path":"/nix/store/x","narSize":1,"narHash":"md5:00000000000000000000000000000000"}]`,
		`[{"path":"/nix/store/x","narSize":1,"narHash":"sha256-short"}]`,
		`[{"path":"relative","narSize":1,"narHash":"sha256-knb9U7Sdy/YWj4gjrvFIevLuTiMEt+5kEtunmYK5CoY="}]`,
	} {
		if got, err := ParsePathInfo([]byte(bad)); err == nil {
			t.Errorf("ParsePathInfo(%q) = %+v, want an error", bad, got)
		}
	}
}

func equalPathInfo(a, b PathInfo) bool {
	return a.StorePath == b.StorePath && a.NarHash == b.NarHash && a.NarSize == b.NarSize &&
		slices.Equal(a.References, b.References) && a.Deriver == b.Deriver && a.CA == b.CA
}

func TestSRIHash(t *testing.T) {
	want := "sha256-knb9U7Sdy/YWj4gjrvFIevLuTiMEt+5kEtunmYK5CoY="
	for _, in := range []string{
		want,
		"sha256:11hap619k9yv29jfxdq44d7fxwks93qsw8w8iwbgdjwxni9zsxlj",
		"sha256:9276fd53b49dcbf6168f8823aef1487af2ee4e2304b7ee6412dba79982b90a86",
	} {
		got, err := SRIHash(in)
		if err != nil || got != want {
			t.Errorf("SRIHash(%q) = %q, %v, want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "sha256", "sha1:0000000000000000000000000000000000000000", "sha256-!!"} {
		if got, err := SRIHash(bad); err == nil {
			t.Errorf("SRIHash(%q) = %q, want an error", bad, got)
		}
	}
}

// TestErrorMessage compares ErrorMessage of each testdata/errors/*.stderr
// with the .want file beside it. Run with -update to rewrite them.
func TestErrorMessage(t *testing.T) {
	files, err := filepath.Glob("testdata/errors/*.stderr")
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata/errors/*.stderr files: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			stderr, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got := ErrorMessage(stderr)

			wantFile := strings.TrimSuffix(file, ".stderr") + ".want"
			if *update {
				if err := os.WriteFile(wantFile, []byte(got+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(wantFile)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if got != strings.TrimSuffix(string(want), "\n") {
				t.Errorf("ErrorMessage(%s) =\n%s\nwant\n%s", file, got, want)
			}
		})
	}
}

func TestBuildFailed(t *testing.T) {
	tests := []struct {
		code int
		want bool
	}{{1, false}, {100, true}, {101, true}, {102, true}, {104, true}, {108, true}, {111, true}, {112, false}, {-1, false}}
	for _, tt := range tests {
		err := error(&Error{Command: "nix-store --realise", ExitCode: tt.code})
		if got := BuildFailed(err); got != tt.want {
			t.Errorf("BuildFailed(exit code %d) = %v, want %v", tt.code, got, tt.want)
		}
	}
	if BuildFailed(errors.New("other")) {
		t.Errorf("BuildFailed(a plain error) = true, want false")
	}
}

func TestParseDerivation(t *testing.T) {
	f, err := os.Open("testdata/d.drv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	drv, err := ParseDerivation(f)
	if err != nil {
		t.Fatalf("ParseDerivation(d.drv) = %v", err)
	}
	if drv.Name != "d" || drv.System != "x86_64-linux" {
		t.Errorf("ParseDerivation(d.drv) name, system = %q, %q, want d, x86_64-linux", drv.Name, drv.System)
	}
	if got := drv.Outputs["out"]; got != "/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d" {
		t.Errorf("ParseDerivation(d.drv).Outputs[out] = %q", got)
	}
	wantInputs := map[string][]string{
		"/nix/store/97dmrf1053flz96r3j9x3g4mlqdcycz9-c.drv": {"out"},
		"/nix/store/bkvqvvj1slqnfk6khna595fa16f0dsjl-b.drv": {"out"},
	}
	if len(drv.InputDrvs) != len(wantInputs) {
		t.Errorf("ParseDerivation(d.drv).InputDrvs = %v, want %v", drv.InputDrvs, wantInputs)
	}
	for path, outputs := range wantInputs {
		if !slices.Equal(drv.InputDrvs[path], outputs) {
			t.Errorf("ParseDerivation(d.drv).InputDrvs[%s] = %v, want %v", path, drv.InputDrvs[path], outputs)
		}
	}
	if len(drv.RequiredSystemFeatures) != 0 {
		t.Errorf("ParseDerivation(d.drv).RequiredSystemFeatures = %q, want none", drv.RequiredSystemFeatures)
	}
}

func TestParseDerivationFeatures(t *testing.T) {
	plain := `Derive([("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d","","")],[],[],"x86_64-linux","/bin/sh",[],[("name","d"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d"),("requiredSystemFeatures","kvm big-parallel")])`
	structured := `Derive([("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d","","")],[],[],"x86_64-linux","/bin/sh",[],[("__json","{\"name\":\"d\",\"requiredSystemFeatures\":[\"kvm\"]}"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d")])`
	floating := `Derive([("dev","","r:sha256",""),("out","","r:sha256","")],[],[],"x86_64-linux","/bin/sh",[],[("name","ca")])`

	tests := []struct {
		name     string
		drv      string
		features []string
		outputs  map[string]string
	}{
		{"plain", plain, []string{"kvm", "big-parallel"}, map[string]string{"out": "/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d"}},
		{"structured", structured, []string{"kvm"}, map[string]string{"out": "/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d"}},
		{"floating", floating, nil, map[string]string{"dev": "", "out": ""}},
	}
	for _, tt := range tests {
		drv, err := ParseDerivation(strings.NewReader(tt.drv))
		if err != nil {
			t.Errorf("ParseDerivation(%s) = %v", tt.name, err)
			continue
		}
		if !slices.Equal(drv.RequiredSystemFeatures, tt.features) {
			t.Errorf("ParseDerivation(%s).RequiredSystemFeatures = %q, want %q", tt.name, drv.RequiredSystemFeatures, tt.features)
		}
		if len(drv.Outputs) != len(tt.outputs) {
			t.Errorf("ParseDerivation(%s).Outputs = %v, want %v", tt.name, drv.Outputs, tt.outputs)
		}
		for name, path := range tt.outputs {
			if got, ok := drv.Outputs[name]; !ok || got != path {
				t.Errorf("ParseDerivation(%s).Outputs[%s] = %q, want %q", tt.name, name, got, path)
			}
		}
	}

	for _, bad := range []string{"", "Derive(", `Derive([],[],[],"x","/bin/sh",[],[("name","d")])`, `Derive([("out","relative","","")],[],[],"x","b",[],[("name","d")])`} {
		if _, err := ParseDerivation(strings.NewReader(bad)); err == nil {
			t.Errorf("ParseDerivation(%q) = nil error, want an error", bad)
		}
	}
}

func TestQuoteString(t *testing.T) {
	tests := []struct{ in, want string }{
		{"plain", `"plain"`},
		{`a"b`, `"a\"b"`},
		{`a\b`, `"a\\b"`},
		{"${x}", `"\${x}"`},
		{"a\nb\tc\r", `"a\nb\tc\r"`},
	}
	for _, tt := range tests {
		if got := QuoteString(tt.in); got != tt.want {
			t.Errorf("QuoteString(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestParseSystemFeatures(t *testing.T) {
	nix28, err := os.ReadFile("testdata/show-config-2.8.json")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		data string
		want []string
	}{
		{"nix 2.8", string(nix28), []string{"benchmark", "big-parallel", "kvm", "nixos-test"}},
		{"string value", `{"system-features": {"value": "kvm  big-parallel kvm"}}`, []string{"kvm", "big-parallel"}},
		{"empty list", `{"system-features": {"value": []}}`, []string{}},
	}
	for _, tt := range tests {
		got, err := ParseSystemFeatures([]byte(tt.data))
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseSystemFeatures(%s) = %q, %v, want %q", tt.name, got, err, tt.want)
		}
	}
	for _, bad := range []string{`[]`, `{}`, `{"system-features": {"value": 3}}`, `not json`} {
		if _, err := ParseSystemFeatures([]byte(bad)); err == nil {
			t.Errorf("ParseSystemFeatures(%s) = nil error, want an error", bad)
		}
	}
}

func TestParseDerivationParallelBuilding(t *testing.T) {
	const out = `[("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d","","")]`
	// Environment variables are sorted: enableParallelBuilding goes
	// before name and requiredSystemFeatures after out.
	drvWith := func(before, after string) string {
		return `Derive(` + out + `,[],[],"x86_64-linux","/bin/sh",[],[` + before + `("name","d"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d")` + after + `])`
	}
	tests := []struct {
		name string
		drv  string
		want bool
	}{
		{"unset", drvWith("", ""), false},
		{"enabled", drvWith(`("enableParallelBuilding","1"),`, ""), true},
		{"disabled", drvWith(`("enableParallelBuilding",""),`, ""), false},
		{"big-parallel", drvWith("", `,("requiredSystemFeatures","big-parallel")`), true},
		{"structured true", `Derive(` + out + `,[],[],"x86_64-linux","/bin/sh",[],[("__json","{\"name\":\"d\",\"enableParallelBuilding\":true}"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d")])`, true},
		{"structured false", `Derive(` + out + `,[],[],"x86_64-linux","/bin/sh",[],[("__json","{\"name\":\"d\",\"enableParallelBuilding\":false}"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d")])`, false},
		{"structured string", `Derive(` + out + `,[],[],"x86_64-linux","/bin/sh",[],[("__json","{\"name\":\"d\",\"enableParallelBuilding\":\"1\"}"),("out","/nix/store/ibszk4np0dyz1h3hh77pgg873jva7jw0-d")])`, false},
	}
	for _, tt := range tests {
		drv, err := ParseDerivation(strings.NewReader(tt.drv))
		if err != nil {
			t.Errorf("ParseDerivation(%s) = %v", tt.name, err)
			continue
		}
		if drv.ParallelBuilding != tt.want {
			t.Errorf("ParseDerivation(%s).ParallelBuilding = %t, want %t", tt.name, drv.ParallelBuilding, tt.want)
		}
	}
}
