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
// entry point named by the pattern when wildcardUnmatchedIsError returns
// true, and a progress line otherwise.
func (e *evaluation) reportUnmatched(ctx context.Context) error {
	matchedDerivation := slices.ContainsFunc(e.entryPoints, func(ep entryPoint) bool { return ep.err == "" })
	reported := map[string]bool{}
	for _, p := range e.patterns {
		if reported[p.String()] || e.hasEntryPoint(p) {
			continue
		}
		reported[p.String()] = true

		if path, ok := literalPath(p); ok {
			found, err := e.selectPath(ctx, path)
			if err != nil {
				return e.fail(path, err)
			}
			if message := found.message(path); message != "" {
				fmt.Fprintf(e.progress, "error in %s: %s\n", attrpath.Join(path), message)
				e.entryPoints = append(e.entryPoints, entryPoint{path: path, err: message})
				continue
			}
		}

		isError, reason, err := e.wildcardUnmatchedIsError(ctx, p, matchedDerivation)
		if err != nil {
			return err
		}
		message := fmt.Sprintf("pattern %s matched no derivation", p)
		if !isError {
			fmt.Fprintf(e.progress, "%s, which is not an error because %s\n", message, reason)
			continue
		}
		fmt.Fprintf(e.progress, "error: %s\n", message)
		e.patternErrors = append(e.patternErrors, entryPoint{pattern: p.String(), err: message})
	}
	return nil
}

// wildcardUnmatchedIsError decides whether a pattern with wildcards that
// matched nothing is an error, and returns the reason when it is not.
//
// It is not an error when a "**" search below it failed, because the
// failed attribute may hold the derivations it would match. It is also not
// an error when another pattern matched a derivation and the names before
// the pattern's first wildcard are missing from the flake outputs. So the
// default patterns packages.*.*,checks.*.* accept a flake without checks,
// while packages.*.typo, or a typo that leaves nothing to build, fails.
func (e *evaluation) wildcardUnmatchedIsError(ctx context.Context, p attrpath.Pattern, matchedDerivation bool) (bool, string, error) {
	if e.searchFailedUnder(p) {
		return false, "attributes it searched failed to evaluate", nil
	}
	if !matchedDerivation {
		return true, "", nil
	}
	prefix := p.Prefix()
	if len(prefix) == 0 {
		return true, "", nil
	}
	found, err := e.selectPath(ctx, prefix)
	if _, ok := nixMessage(err); ok {
		// The prefix fails to evaluate, so it is there.
		return true, "", nil
	}
	if err != nil {
		return false, "", err
	}
	if found.Index < len(prefix) {
		return false, "the flake has no " + attrpath.Join(prefix[:found.Index+1]), nil
	}
	return true, "", nil
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

// selection is how far an attribute path can be selected in the flake
// outputs.
type selection struct {
	// Index is the number of names selected: the index of the first
	// missing name, or the length of the path when all are there.
	Index int `json:"index"`
	// Kind is the type of the value at the last selected name, as
	// builtins.typeOf names it, or "derivation".
	Kind string `json:"kind"`
}

// selectPath selects the names of path in the flake outputs while the
// value is an attribute set that is not a derivation. It evaluates the
// attribute sets along path and the value at the end only as far as its
// type.
func (e *evaluation) selectPath(ctx context.Context, path []string) (selection, error) {
	encoded, err := json.Marshal(path)
	if err != nil {
		return selection{}, fmt.Errorf("encode attribute path: %w", err)
	}
	expr := "let path = builtins.fromJSON " + nix.QuoteString(string(encoded)) + ";" +
		` kind = v: if builtins.isAttrs v then (if (v.type or null) == "derivation" then "derivation" else "set") else builtins.typeOf v;` +
		` go = v: i: if i == builtins.length path then { index = i; kind = kind v; }` +
		` else if kind v == "set" && builtins.hasAttr (builtins.elemAt path i) v then go v.${builtins.elemAt path i} (i + 1)` +
		` else { index = i; kind = kind v; };` +
		" in go " + nix.OutputsExpr(e.url, nil) + " 0"

	var found selection
	if err := e.nix.EvalJSON(ctx, expr, &found); err != nil {
		return selection{}, err
	}
	if found.Index < 0 || found.Index > len(path) {
		return selection{}, fmt.Errorf("select attribute path: nix returned index %d for a path of %d names", found.Index, len(path))
	}
	return found, nil
}

// message returns why path is not a derivation: a missing attribute along
// path, or the type of the value at path. It returns "" for a derivation.
func (s selection) message(path []string) string {
	i := s.Index
	switch {
	case i == len(path) && s.Kind == "derivation":
		return ""
	case i == len(path):
		return "not a derivation (" + describeType(s.Kind) + ")"
	case s.Kind != "set":
		return fmt.Sprintf("attribute not found: %s is %s, not an attribute set", attrpath.Join(path[:i]), describeType(s.Kind))
	case i == len(path)-1:
		return "attribute not found"
	case i == 0:
		return fmt.Sprintf("attribute not found: the flake has no output %q", path[0])
	default:
		return fmt.Sprintf("attribute not found: %s has no attribute %q", attrpath.Join(path[:i]), path[i])
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
