// Package attrpath parses entry point patterns, such as
// "packages.*.*,checks.**", and matches them against flake output attribute
// paths.
//
// A pattern is a list of segments separated by ".". A segment is one of:
//
//   - a name, such as packages or x86_64-linux, which matches itself;
//   - a quoted name, such as "a.b" or "*", which matches the text between
//     the quotes literally (inside quotes, \" is a quote and \\ a backslash);
//   - *, which matches exactly one attribute name;
//   - **, which matches zero or more attribute names.
//
// "**" matches zero names too, as in gitignore and most glob libraries, so
// "checks.**" reaches checks.x86_64-linux.foo and also checks.x86_64-linux
// .nested.deep, and "**.hello" matches a top-level hello.
package attrpath

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrInvalid is wrapped by every error that Parse and ParseList return.
var ErrInvalid = errors.New("invalid attribute path pattern")

// Kind is the kind of a pattern segment.
type Kind int

const (
	// Name matches one attribute whose name equals Segment.Name.
	Name Kind = iota
	// One matches exactly one attribute name, written "*".
	One
	// Any matches zero or more attribute names, written "**".
	Any
)

// Segment is one dot-separated element of a Pattern.
type Segment struct {
	Kind Kind
	// Name is the attribute name for a Name segment, empty otherwise.
	Name string
}

// Pattern is a parsed entry point pattern. The zero Pattern has no segments
// and matches only the empty path. A Pattern is immutable and safe for
// concurrent use.
type Pattern struct {
	text     string
	segments []Segment
}

// Parse parses a single pattern such as "packages.*.*". It rejects an empty
// pattern, an empty segment (as in "a..b" or "a."), an unterminated quote,
// text after a closing quote, whitespace or control characters outside
// quotes, and partial wildcards such as "foo*".
func Parse(text string) (Pattern, error) {
	if text == "" {
		return Pattern{}, fmt.Errorf("%w: the pattern is empty: write attribute names separated by dots, such as packages.*.*", ErrInvalid)
	}

	segments, err := splitSegments(text)
	if err != nil {
		return Pattern{}, fmt.Errorf("%w %q: %w", ErrInvalid, text, err)
	}

	return Pattern{text: text, segments: segments}, nil
}

// ParseList parses a comma-separated list of patterns, such as
// "packages.*.*,checks.*.*". Spaces around each pattern are ignored, and a
// comma inside a quoted segment does not separate patterns. The list must
// contain at least one pattern.
func ParseList(text string) ([]Pattern, error) {
	parts, err := splitList(text)
	if err != nil {
		return nil, fmt.Errorf("%w list %q: %w", ErrInvalid, text, err)
	}

	patterns := make([]Pattern, 0, len(parts))
	for _, part := range parts {
		p, err := Parse(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		patterns = append(patterns, p)
	}
	return patterns, nil
}

// String returns the pattern as it was written.
func (p Pattern) String() string {
	return p.text
}

// Segments returns a copy of the pattern's segments.
func (p Pattern) Segments() []Segment {
	return slices.Clone(p.segments)
}

// Match reports whether the attribute path matches the whole pattern.
func (p Pattern) Match(path []string) bool {
	return slices.Contains(p.advance(path), len(p.segments))
}

// CanMatchBelow reports whether some attribute path that extends path by
// one or more names could match the pattern. A walker uses it to decide
// whether to descend into the attribute set at path.
func (p Pattern) CanMatchBelow(path []string) bool {
	for _, pos := range p.advance(path) {
		if pos < len(p.segments) {
			return true
		}
	}
	return false
}

// Names reports whether the pattern names path without a "**": path
// matches the whole pattern, or matches its first len(path) segments and
// none of them is "**". For "packages.*.*", the path
// [packages x86_64-linux] is named; for "**.hello", only paths that end in
// hello are. A walker reports an error at a named path, and only notes
// one that it met while searching below a "**".
func (p Pattern) Names(path []string) bool {
	if p.Match(path) {
		return true
	}
	if len(path) > len(p.segments) {
		return false
	}
	for i, name := range path {
		switch s := p.segments[i]; s.Kind {
		case Any:
			return false
		case Name:
			if s.Name != name {
				return false
			}
		}
	}
	return true
}

// Prefix returns the literal names at the start of the pattern, up to the
// first wildcard: "packages.x86_64-linux.*" has the prefix
// [packages x86_64-linux]. Every path that matches starts with the prefix.
func (p Pattern) Prefix() []string {
	var prefix []string
	for _, s := range p.segments {
		if s.Kind != Name {
			break
		}
		prefix = append(prefix, s.Name)
	}
	return prefix
}

// advance returns the positions in p.segments that the pattern can be at
// after consuming path, in increasing order without duplicates. Position
// len(p.segments) means the whole pattern has been consumed.
func (p Pattern) advance(path []string) []int {
	positions := p.closure(nil, 0)
	for _, name := range path {
		var next []int
		for _, pos := range positions {
			if pos == len(p.segments) {
				continue
			}
			switch s := p.segments[pos]; s.Kind {
			case Any:
				// "**" consumes the name and stays, so it can take more.
				next = p.closure(next, pos)
			case One:
				next = p.closure(next, pos+1)
			case Name:
				if s.Name == name {
					next = p.closure(next, pos+1)
				}
			}
		}
		if len(next) == 0 {
			return nil
		}
		positions = next
	}
	slices.Sort(positions)
	return slices.Compact(positions)
}

// closure adds pos to positions, and also the positions after any "**"
// segments starting at pos, because "**" may match zero names.
func (p Pattern) closure(positions []int, pos int) []int {
	for {
		if !slices.Contains(positions, pos) {
			positions = append(positions, pos)
		}
		if pos == len(p.segments) || p.segments[pos].Kind != Any {
			return positions
		}
		pos++
	}
}

// Join formats an attribute path the way a pattern is written. It quotes
// empty names and names that contain a dot, a quote, a backslash, a comma,
// a star, a space, a control character or invalid UTF-8.
func Join(path []string) string {
	var b strings.Builder
	for i, name := range path {
		if i > 0 {
			b.WriteByte('.')
		}
		if !needsQuotes(name) {
			b.WriteString(name)
			continue
		}
		b.WriteByte('"')
		for i := 0; i < len(name); i++ {
			if name[i] == '"' || name[i] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(name[i])
		}
		b.WriteByte('"')
	}
	return b.String()
}

func needsQuotes(name string) bool {
	if name == "" || name == "*" || name == "**" {
		return true
	}
	return strings.ContainsFunc(name, func(r rune) bool {
		return r == '.' || r == '"' || r == '\\' || r == ',' || r == '*' ||
			r == utf8.RuneError || unicode.IsSpace(r) || unicode.IsControl(r)
	})
}
