package attrpath

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
)

func TestMatch(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		path    []string
		want    bool
	}{
		{"literal", "packages.x86_64-linux.hello", []string{"packages", "x86_64-linux", "hello"}, true},
		{"literal other name", "packages.x86_64-linux.hello", []string{"packages", "x86_64-linux", "world"}, false},
		{"star one name", "packages.*.*", []string{"packages", "x86_64-linux", "hello"}, true},
		{"star too short", "packages.*.*", []string{"packages", "x86_64-linux"}, false},
		{"star too long", "packages.*.*", []string{"packages", "x86_64-linux", "a", "b"}, false},
		{"deep zero names", "checks.**", []string{"checks"}, true},
		{"deep one name", "checks.**", []string{"checks", "x86_64-linux"}, true},
		{"deep nested", "checks.**", []string{"checks", "x86_64-linux", "nested", "deep"}, true},
		{"deep other root", "checks.**", []string{"packages", "x86_64-linux"}, false},
		{"deep in middle", "legacyPackages.**.hello", []string{"legacyPackages", "x86_64-linux", "set", "hello"}, true},
		{"deep in middle zero", "legacyPackages.**.hello", []string{"legacyPackages", "hello"}, true},
		{"deep in middle wrong tail", "legacyPackages.**.hello", []string{"legacyPackages", "x86_64-linux", "world"}, false},
		{"two deeps", "**.a.**", []string{"x", "a", "y", "z"}, true},
		{"two deeps no a", "**.a.**", []string{"x", "y"}, false},
		{"quoted dot", `packages."a.b"`, []string{"packages", "a.b"}, true},
		{"quoted dot not split", `packages."a.b"`, []string{"packages", "a", "b"}, false},
		{"quoted star is literal", `packages."*"`, []string{"packages", "*"}, true},
		{"quoted star no wildcard", `packages."*"`, []string{"packages", "x"}, false},
		{"quoted escape", `"a\"b"`, []string{`a"b`}, true},
		{"quoted empty name", `a."".b`, []string{"a", "", "b"}, true},
		{"empty path", "packages", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(tt.pattern)
			if err != nil {
				t.Fatalf("Parse(%q) = %v, want no error", tt.pattern, err)
			}
			if got := p.Match(tt.path); got != tt.want {
				t.Errorf("Parse(%q).Match(%q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
			}
		})
	}
}

func TestCanMatchBelow(t *testing.T) {
	tests := []struct {
		pattern string
		path    []string
		want    bool
	}{
		{"packages.*.*", nil, true},
		{"packages.*.*", []string{"packages"}, true},
		{"packages.*.*", []string{"packages", "x86_64-linux"}, true},
		{"packages.*.*", []string{"packages", "x86_64-linux", "hello"}, false},
		{"packages.*.*", []string{"checks"}, false},
		{"checks.**", []string{"checks", "a", "b", "c"}, true},
		{"**", nil, true},
	}
	for _, tt := range tests {
		p, err := Parse(tt.pattern)
		if err != nil {
			t.Fatalf("Parse(%q) = %v, want no error", tt.pattern, err)
		}
		if got := p.CanMatchBelow(tt.path); got != tt.want {
			t.Errorf("Parse(%q).CanMatchBelow(%q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}

func TestPrefix(t *testing.T) {
	tests := []struct {
		pattern string
		want    []string
	}{
		{"packages.x86_64-linux.*", []string{"packages", "x86_64-linux"}},
		{"packages.**.hello", []string{"packages"}},
		{`"a.b".c`, []string{"a.b", "c"}},
		{"*.x", nil},
	}
	for _, tt := range tests {
		p, err := Parse(tt.pattern)
		if err != nil {
			t.Fatalf("Parse(%q) = %v, want no error", tt.pattern, err)
		}
		if got := p.Prefix(); !slices.Equal(got, tt.want) {
			t.Errorf("Parse(%q).Prefix() = %q, want %q", tt.pattern, got, tt.want)
		}
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		wantMsg string
	}{
		{"empty", "", "the pattern is empty"},
		{"empty segment", "packages..hello", "empty segment"},
		{"leading dot", ".packages", "empty segment"},
		{"trailing dot", "packages.", "remove the trailing dot"},
		{"unterminated quote", `packages."a.b`, "missing closing quote"},
		{"stray quote", `pack"ages`, "a quote may only start a segment"},
		{"text after quote", `"a"b`, "after the closing quote"},
		{"partial wildcard", "packages.foo*", "a wildcard must be a whole segment"},
		{"triple star", "packages.***", "a wildcard must be a whole segment"},
		{"space", "packages.a b", "is not allowed outside quotes"},
		{"control", "packages.a\x01", "is not allowed outside quotes"},
		{"bad escape", `"a\b"`, "backslash"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(tt.pattern)
			if err == nil {
				t.Fatalf("Parse(%q) = nil error, want one containing %q", tt.pattern, tt.wantMsg)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("Parse(%q) = %v, want an error wrapping ErrInvalid", tt.pattern, err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("Parse(%q) = %v, want an error containing %q", tt.pattern, err, tt.wantMsg)
			}
			if tt.pattern != "" && !strings.Contains(err.Error(), tt.pattern[:1]) {
				t.Errorf("Parse(%q) = %v, want the error to name the pattern", tt.pattern, err)
			}
		})
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		list string
		want []string
	}{
		{"packages.*.*,checks.*.*", []string{"packages.*.*", "checks.*.*"}},
		{" packages.*.* , checks.** ", []string{"packages.*.*", "checks.**"}},
		{`packages."a,b"`, []string{`packages."a,b"`}},
		{`"a\",b",c`, []string{`"a\",b"`, "c"}},
	}
	for _, tt := range tests {
		patterns, err := ParseList(tt.list)
		if err != nil {
			t.Fatalf("ParseList(%q) = %v, want no error", tt.list, err)
		}
		var got []string
		for _, p := range patterns {
			got = append(got, p.String())
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("ParseList(%q) = %q, want %q", tt.list, got, tt.want)
		}
	}

	for _, bad := range []string{"", "  ", "a,,b", "a,", ",a", `"a,b`} {
		if _, err := ParseList(bad); err == nil {
			t.Errorf("ParseList(%q) = nil error, want an error", bad)
		}
	}
}

func TestJoin(t *testing.T) {
	tests := []struct {
		path []string
		want string
	}{
		{[]string{"packages", "x86_64-linux", "hello"}, "packages.x86_64-linux.hello"},
		{[]string{"packages", "a.b"}, `packages."a.b"`},
		{[]string{"a", `b"c`}, `a."b\"c"`},
		{[]string{"*"}, `"*"`},
		{[]string{""}, `""`},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := Join(tt.path); got != tt.want {
			t.Errorf("Join(%q) = %q, want %q", tt.path, got, tt.want)
		}
	}
}

// FuzzParse checks that Parse never panics and that every path Join writes
// parses back to a pattern matching exactly that path.
func FuzzParse(f *testing.F) {
	seeds, err := os.ReadFile("testdata/seeds.txt")
	if err != nil {
		f.Fatal(err)
	}
	for _, seed := range strings.Split(strings.TrimSuffix(string(seeds), "\n"), "\n") {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		p, err := Parse(text)
		if err != nil {
			return
		}
		p.Match([]string{"a", "b"})
		p.CanMatchBelow([]string{"a"})

		var literal []string
		for _, s := range p.Segments() {
			if s.Kind != Name {
				return
			}
			literal = append(literal, s.Name)
		}
		again, err := Parse(Join(literal))
		if err != nil {
			t.Fatalf("Parse(Join(%q)) = %v, want no error", literal, err)
		}
		if !again.Match(literal) {
			t.Errorf("Parse(Join(%q)).Match(%q) = false, want true", literal, literal)
		}
	})
}

func TestNames(t *testing.T) {
	tests := []struct {
		pattern string
		path    []string
		want    bool
	}{
		{"packages.*.*", []string{"packages", "x86_64-linux"}, true},
		{"packages.*.*", []string{"packages", "x86_64-linux", "hello"}, true},
		{"packages.*.*", []string{"checks"}, false},
		{"**.leaf", []string{"packages", "x86_64-linux", "throws"}, false},
		{"**.leaf", []string{"a", "leaf"}, true},
		{"packages.**.hello", []string{"packages"}, true},
		{"packages.**.hello", []string{"packages", "x86_64-linux"}, false},
		{"checks.**", []string{"checks", "x86_64-linux", "deep"}, true},
		{"a.b", []string{"a", "b", "c"}, false},
	}
	for _, tt := range tests {
		p, err := Parse(tt.pattern)
		if err != nil {
			t.Fatalf("Parse(%q) = %v, want no error", tt.pattern, err)
		}
		if got := p.Names(tt.path); got != tt.want {
			t.Errorf("Parse(%q).Names(%q) = %v, want %v", tt.pattern, tt.path, got, tt.want)
		}
	}
}
