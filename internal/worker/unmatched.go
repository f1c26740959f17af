package worker

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/gradient-ci/gradient/internal/attrpath"
	"github.com/gradient-ci/gradient/internal/nix"
)

// explicit reports whether a pattern names path explicitly: the pattern
// matches path, has no "**" and ends in a name. A match there that is not
// a derivation is an error, and walk.nix reports sets by the same rule.
func (e *evaluation) explicit(path []string) bool {
	for _, p := range e.patterns {
		segments := p.Segments()
		if len(segments) == 0 || segments[len(segments)-1].Kind != attrpath.Name {
			continue
		}
		hasAny := slices.ContainsFunc(segments, func(s attrpath.Segment) bool { return s.Kind == attrpath.Any })
		if !hasAny && p.Match(path) {
			return true
		}
	}
	return false
}

// noteOther records a match that is not a derivation: an error when a
// pattern names it explicitly, else one more skipped attribute. Sets are
// reported by walk.nix only when they are named explicitly.
func (e *evaluation) noteOther(item walkItem) {
	if !e.explicit(item.Path) {
		if item.Other != "set" {
			e.skipped++
		}
		return
	}
	message := "not a derivation (" + describeType(item.Other) + ")"
	fmt.Fprintf(e.progress, "error in %s: %s\n", attrpath.Join(item.Path), message)
	e.entryPoints = append(e.entryPoints, entryPoint{path: item.Path, err: message})
}

// reportUnmatched records an error for each pattern that no entry point
// belongs to. A pattern without wildcards gets an entry point at its path
// whose error names the missing attribute. Any other pattern gets one
// entry point named by the pattern, unless a "**" search below it failed.
// The failed attribute may hold the derivations it would match, so that
// case is a progress line only.
func (e *evaluation) reportUnmatched(ctx context.Context) error {
	reported := map[string]bool{}
	for _, p := range e.patterns {
		if reported[p.String()] || e.hasEntryPoint(p) {
			continue
		}
		reported[p.String()] = true

		if path, ok := literalPath(p); ok {
			message, err := e.missingMessage(ctx, path)
			if err != nil {
				return e.fail(path, err)
			}
			if message != "" {
				fmt.Fprintf(e.progress, "error in %s: %s\n", attrpath.Join(path), message)
				e.entryPoints = append(e.entryPoints, entryPoint{path: path, err: message})
				continue
			}
		}

		if e.searchFailedUnder(p) {
			fmt.Fprintf(e.progress, "pattern %s matched no derivation, but attributes it searched failed to evaluate\n", p)
			continue
		}
		message := fmt.Sprintf("pattern %s matched no derivation", p)
		fmt.Fprintf(e.progress, "error: %s\n", message)
		e.patternErrors = append(e.patternErrors, entryPoint{pattern: p.String(), err: message})
	}
	return nil
}

// hasEntryPoint reports whether an entry point, a derivation or an error,
// belongs to p: p matches its path or names the path as a prefix.
func (e *evaluation) hasEntryPoint(p attrpath.Pattern) bool {
	return slices.ContainsFunc(e.entryPoints, func(ep entryPoint) bool { return p.Names(ep.path) })
}

// searchFailedUnder reports whether an attribute that failed during a "**"
// search lies where p matches or could match below.
func (e *evaluation) searchFailedUnder(p attrpath.Pattern) bool {
	return slices.ContainsFunc(e.searchErrorPaths, func(path []string) bool {
		return p.Match(path) || p.CanMatchBelow(path)
	})
}

// literalPath returns the attribute path of a pattern without wildcards.
func literalPath(p attrpath.Pattern) ([]string, bool) {
	segments := p.Segments()
	path := make([]string, 0, len(segments))
	for _, s := range segments {
		if s.Kind != attrpath.Name {
			return nil, false
		}
		path = append(path, s.Name)
	}
	return path, len(path) > 0
}

// missingMessage returns why the attribute at path is not a derivation in
// the flake outputs: a missing attribute along path, or the type of the
// value at path. It returns "" for a derivation.
func (e *evaluation) missingMessage(ctx context.Context, path []string) (string, error) {
	encoded, err := json.Marshal(path)
	if err != nil {
		return "", fmt.Errorf("encode attribute path: %w", err)
	}
	expr := "let path = builtins.fromJSON " + nix.QuoteString(string(encoded)) + ";" +
		` kind = v: if builtins.isAttrs v then (if (v.type or null) == "derivation" then "derivation" else "set") else builtins.typeOf v;` +
		` go = v: i: if i == builtins.length path then { index = i; kind = kind v; }` +
		` else if kind v == "set" && builtins.hasAttr (builtins.elemAt path i) v then go v.${builtins.elemAt path i} (i + 1)` +
		` else { index = i; kind = kind v; };` +
		" in go " + nix.OutputsExpr(e.url, nil) + " 0"

	var found struct {
		Index int    `json:"index"`
		Kind  string `json:"kind"`
	}
	if err := e.nix.EvalJSON(ctx, expr, &found); err != nil {
		return "", err
	}
	i := found.Index
	switch {
	case i < 0 || i > len(path):
		return "", fmt.Errorf("find missing attribute: nix returned index %d for a path of %d names", i, len(path))
	case i == len(path) && found.Kind == "derivation":
		return "", nil
	case i == len(path):
		return "not a derivation (" + describeType(found.Kind) + ")", nil
	case found.Kind != "set":
		return fmt.Sprintf("attribute not found: %s is %s, not an attribute set", attrpath.Join(path[:i]), describeType(found.Kind)), nil
	case i == len(path)-1:
		return "attribute not found", nil
	case i == 0:
		return fmt.Sprintf("attribute not found: the flake has no output %q", path[0]), nil
	default:
		return fmt.Sprintf("attribute not found: %s has no attribute %q", attrpath.Join(path[:i]), path[i]), nil
	}
}

// describeType returns a noun phrase for a type name of builtins.typeOf,
// or for "derivation".
func describeType(typeName string) string {
	switch typeName {
	case "int":
		return "an integer"
	case "float":
		return "a float"
	case "bool":
		return "a Boolean"
	case "string":
		return "a string"
	case "path":
		return "a path"
	case "null":
		return "null"
	case "list":
		return "a list"
	case "lambda":
		return "a function"
	case "set":
		return "an attribute set"
	case "derivation":
		return "a derivation"
	default:
		return "a value of type " + typeName
	}
}
