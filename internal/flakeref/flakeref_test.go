package flakeref

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		ref  string
		want Kind
	}{
		{"/srv/project", Path},
		{"/srv/project?dir=sub", Path},
		{"path:/srv/project", Path},
		{"path:/srv/project?narHash=sha256-7peN8rhbHLSmFcWiqguURF7AIELOI6vURiEC6flgJ5c%3D", Path},
		{"git+file:///srv/project", Git},
		{"git+file:///srv/project?ref=main&rev=0123456789abcdef0123456789abcdef01234567", Git},
		{"git+https://example.org/repo.git", Git},
		{"git+https://example.org/repo.git?ref=refs/heads/main", Git},
		{"git+http://127.0.0.1:8080/repo", Git},
		{"git+ssh://git@example.org/owner/repo", Git},
		{"hg+https://example.org/repo", Mercurial},
		{"github:NixOS/nixpkgs", GitHub},
		{"github:NixOS/nixpkgs/nixos-23.11", GitHub},
		{"github:owner/repo/0123456789abcdef0123456789abcdef01234567", GitHub},
		{"github:owner/repo?dir=sub", GitHub},
		{"gitlab:group/project", GitLab},
		{"sourcehut:~user/repo", SourceHut},
		{"sourcehut:~user/repo/main", SourceHut},
		{"https://example.org/source.tar.gz", Tarball},
		{"tarball+https://example.org/archive", Tarball},
		{"file+https://example.org/flake.nix", File},
		{"file:///srv/source.tar.gz", Tarball},
		{"tarball+file:///srv/source.tar.gz", Tarball},
		{"flake:nixpkgs", Indirect},
		{"flake:nixpkgs/nixos-23.11", Indirect},
	}
	for _, tt := range tests {
		got, err := Parse(tt.ref)
		if err != nil {
			t.Errorf("Parse(%q) = %v, want kind %s", tt.ref, err, tt.want)
			continue
		}
		if got.Kind != tt.want || got.Raw != tt.ref {
			t.Errorf("Parse(%q) = %+v, want kind %s", tt.ref, got, tt.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name    string
		ref     string
		wantMsg string
	}{
		{"empty", "", "it is empty"},
		{"blank", "   ", "it is empty"},
		{"relative dot", "./project", "relative path"},
		{"relative dotdot", "../project", "relative path"},
		{"relative name", "project/sub", "relative path"},
		{"bare name", "nixpkgs", "flake:nixpkgs"},
		{"home", "~/project", "home directory"},
		{"path relative", "path:project", "relative path"},
		{"path dot", "path:./project", "relative path"},
		{"space", "/srv/my project", "whitespace"},
		{"newline", "github:a/b\n", "whitespace"},
		{"control", "/srv/\x00x", "control character"},
		{"fragment", "github:owner/repo#packages.x86_64-linux.hello", "fragment"},
		{"short rev", "git+file:///srv/project?rev=zzz", "not a full commit hash"},
		{"abbreviated rev", "github:owner/repo?rev=0123abc", "not a full commit hash"},
		{"unknown scheme", "svn://example.org/repo", "unknown scheme"},
		{"git file relative", "git+file:project", "must be absolute"},
		{"git file host", "git+file://host/srv/project", "three slashes"},
		{"git https no host", "git+https:///repo", "host is missing"},
		{"github one segment", "github:owner", "owner/repo"},
		{"github four segments", "github:a/b/c/d", "owner/repo"},
		{"github empty repo", "github:owner/", "repository is empty"},
		{"github bad owner", "github:own@er/repo", "owner"},
		{"flake bad id", "flake:9lives", "not a registry name"},
		{"flake empty", "flake:", "not a registry name"},
		{"bad query", "path:/srv?a=%zz", "invalid query"},
		{"bad url", "git+https://exa mple.org", "whitespace"},
		{"bad port", "git+ssh://git@example.org:owner/repo", "not a valid URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.ref)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error containing %q", tt.ref, got, tt.wantMsg)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) = %v, want an error wrapping ErrInvalid", tt.ref, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Parse(%q) = %v, want an error containing %q", tt.ref, err, tt.wantMsg)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	seeds, err := os.ReadFile("testdata/seeds.txt")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range strings.Split(strings.TrimSuffix(string(seeds), "\n"), "\n") {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		got, err := Parse(ref)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) = %v, want an error wrapping ErrInvalid", ref, err)
			}
			return
		}
		if got.Kind == "" {
			t.Errorf("Parse(%q) = %+v, want a kind", ref, got)
		}
		if strings.ContainsAny(ref, " \t\n#") {
			t.Errorf("Parse(%q) accepted whitespace or a fragment", ref)
		}
	})
}
