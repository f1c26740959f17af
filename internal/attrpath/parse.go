package attrpath

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// splitSegments splits one pattern into segments, resolving quotes.
func splitSegments(text string) ([]Segment, error) {
	var segments []Segment
	rest := text
	for index := 1; ; index++ {
		segment, tail, err := cutSegment(rest)
		if err != nil {
			return nil, fmt.Errorf("segment %d: %w", index, err)
		}
		segments = append(segments, segment)

		if tail == "" {
			return segments, nil
		}
		// cutSegment stops only at a dot or at the end.
		rest = tail[1:]
		if rest == "" {
			return nil, fmt.Errorf("segment %d: empty segment after the last dot: remove the trailing dot", index+1)
		}
	}
}

// cutSegment parses the segment at the start of text and returns it with
// the text that follows, which is empty or starts with a dot.
func cutSegment(text string) (Segment, string, error) {
	if strings.HasPrefix(text, `"`) {
		return cutQuoted(text)
	}

	end := strings.IndexByte(text, '.')
	if end < 0 {
		end = len(text)
	}
	word, tail := text[:end], text[end:]

	switch {
	case word == "":
		return Segment{}, "", errors.New(`empty segment: two dots in a row or a leading dot; quote an empty name as ""`)
	case word == "*":
		return Segment{Kind: One}, tail, nil
	case word == "**":
		return Segment{Kind: Any}, tail, nil
	case strings.Contains(word, "*"):
		return Segment{}, "", fmt.Errorf("%q: a wildcard must be a whole segment, * or **; quote the name to match a literal *", word)
	case strings.Contains(word, `"`):
		return Segment{}, "", fmt.Errorf("%q: a quote may only start a segment, as in \"a.b\"", word)
	}

	if i := strings.IndexFunc(word, invalidUnquoted); i >= 0 {
		r, _ := utf8.DecodeRuneInString(word[i:])
		return Segment{}, "", fmt.Errorf("%q: character %q is not allowed outside quotes", word, r)
	}
	return Segment{Kind: Name, Name: word}, tail, nil
}

func invalidUnquoted(r rune) bool {
	return r == utf8.RuneError || r == ',' || r == '\\' || unicode.IsSpace(r) || unicode.IsControl(r)
}

// cutQuoted parses a quoted name at the start of text.
func cutQuoted(text string) (Segment, string, error) {
	var name strings.Builder
	for i := 1; i < len(text); i++ {
		c := text[i]
		switch c {
		case '\\':
			if i+1 == len(text) || (text[i+1] != '"' && text[i+1] != '\\') {
				return Segment{}, "", errors.New(`inside quotes, a backslash must be followed by " or \`)
			}
			i++
			name.WriteByte(text[i])
		case '"':
			tail := text[i+1:]
			if tail != "" && tail[0] != '.' {
				return Segment{}, "", fmt.Errorf("unexpected %q after the closing quote: a quoted name must be a whole segment", tail)
			}
			return Segment{Kind: Name, Name: name.String()}, tail, nil
		default:
			if c < 0x20 || c == 0x7f {
				return Segment{}, "", fmt.Errorf("control character %q inside quotes", c)
			}
			name.WriteByte(c)
		}
	}
	return Segment{}, "", errors.New("missing closing quote")
}

// splitList splits a comma-separated list of patterns, keeping commas that
// sit inside quotes.
func splitList(text string) ([]string, error) {
	if strings.TrimSpace(text) == "" {
		return nil, errors.New("the list is empty: write one or more patterns separated by commas, such as packages.*.*,checks.*.*")
	}

	var parts []string
	start := 0
	quoted := false
	for i := 0; i < len(text); i++ {
		switch text[i] {
		case '\\':
			if quoted {
				i++
			}
		case '"':
			quoted = !quoted
		case ',':
			if quoted {
				continue
			}
			parts = append(parts, text[start:i])
			start = i + 1
		}
	}
	parts = append(parts, text[start:])

	for i, part := range parts {
		if strings.TrimSpace(part) == "" {
			return nil, fmt.Errorf("pattern %d is empty: remove the extra comma", i+1)
		}
	}
	return parts, nil
}
