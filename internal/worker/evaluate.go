package worker

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/gradient-ci/gradient/internal/attrpath"
	"github.com/gradient-ci/gradient/internal/nix"
	"github.com/gradient-ci/gradient/protocol"
)

//go:embed walk.nix
var walkExpr string

// ErrNoEntryPoints is returned by Evaluate for a request without patterns.
var ErrNoEntryPoints = errors.New("no entry point patterns")

// Evaluate locks the flake, lists the attributes that match the entry
// point patterns, evaluates their drvPaths into the worker's store, and
// returns the closure of their derivations. An attribute that fails to
// evaluate is recorded in its EntryPoint with nix's message when a pattern
// names it without "**", as attrpath.Pattern.Names defines. An attribute
// that a "**" only searched through gets a progress line instead.
//
// A pattern that has no "**" and ends in a name records an error for a
// match that is not a derivation, such as an integer or an attribute set.
// A pattern without wildcards whose attribute is missing records an error
// at its path that names the missing attribute. Any other pattern that
// matched nothing gets one EntryPoint with the pattern as Attr and the
// error "pattern P matched no derivation", except in the cases that
// wildcardUnmatchedIsError lists, such as checks.*.* for a flake without
// checks when another pattern matched a derivation.
//
// Evaluate returns an error only for an invalid request, a flake that
// cannot be locked or whose outputs cannot be evaluated at all, a fault of
// the worker, or a cancelled ctx. With req.ListOnly it stops after listing
// the matching attributes, whose DrvPath stays empty.
func (w *Worker) Evaluate(ctx context.Context, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	res, err := w.evaluate(ctx, req, progress)
	return res, markFault(err)
}

func (w *Worker) evaluate(ctx context.Context, req protocol.EvalRequest, progress io.Writer) (protocol.EvalResult, error) {
	if progress == nil {
		progress = io.Discard
	}
	patterns, err := parsePatterns(req.EntryPoints)
	if err != nil {
		return protocol.EvalResult{}, err
	}

	release, err := w.acquire(ctx)
	if err != nil {
		return protocol.EvalResult{}, err
	}
	defer release()

	logger := w.logger.With("flake_ref", req.FlakeRef)
	started := time.Now()
	logger.Info("evaluation started")

	fmt.Fprintf(progress, "locking %s\n", req.FlakeRef)
	meta, err := w.nix.FlakeMetadata(ctx, req.FlakeRef)
	if err != nil {
		return protocol.EvalResult{}, fmt.Errorf("lock flake %q: %w", req.FlakeRef, err)
	}
	fmt.Fprintf(progress, "locked %s\n", meta.LockedURL)

	evalURL := meta.LockedURL
	if !meta.Locked() {
		// A dirty git tree has no revision, so the copy nix fetched is
		// what every step evaluates.
		evalURL = meta.SnapshotURL()
		fmt.Fprintf(progress, "%s is not locked (a dirty git tree?): evaluating its copy %s\n", meta.LockedURL, meta.Path)
	}

	e := &evaluation{nix: w.nix, url: evalURL, patterns: patterns, progress: progress, list: req.ListOnly}
	if err := e.walk(ctx, nil); err != nil {
		return protocol.EvalResult{}, err
	}
	if err := e.reportUnmatched(ctx); err != nil {
		return protocol.EvalResult{}, err
	}
	slices.SortFunc(e.entryPoints, func(a, b entryPoint) int { return slices.Compare(a.path, b.path) })
	e.entryPoints = append(e.entryPoints, e.patternErrors...)
	if e.skipped > 0 {
		fmt.Fprintf(progress, "skipped %d matching attributes that are not derivations\n", e.skipped)
	}

	result := protocol.EvalResult{
		Flake: protocol.LockedFlake{
			OriginalURL:  meta.OriginalURL,
			LockedURL:    meta.LockedURL,
			Revision:     meta.Revision,
			NarHash:      meta.NarHash,
			LastModified: meta.LastModified,
		},
	}
	var roots []string
	failed := 0
	for _, ep := range e.entryPoints {
		attr := ep.pattern
		if attr == "" {
			attr = attrpath.Join(ep.path)
		}
		result.EntryPoints = append(result.EntryPoints, protocol.EntryPoint{
			Attr:    attr,
			DrvPath: ep.drvPath,
			Error:   ep.err,
		})
		if ep.drvPath != "" {
			roots = append(roots, ep.drvPath)
		} else if ep.err != "" {
			failed++
		}
	}
	if req.ListOnly {
		fmt.Fprintf(progress, "listed %d entry points, %d failed\n", len(result.EntryPoints), failed)
		logger.Info("listing finished", "entry_points", len(result.EntryPoints), "failed_entry_points", failed, "duration", time.Since(started))
		return result, nil
	}
	fmt.Fprintf(progress, "evaluated %d entry points, %d failed\n", len(result.EntryPoints), failed)

	result.Derivations, err = w.closure(roots)
	if err != nil {
		return protocol.EvalResult{}, err
	}
	fmt.Fprintf(progress, "read %d derivations\n", len(result.Derivations))

	logger.Info("evaluation finished",
		"entry_points", len(result.EntryPoints), "failed_entry_points", failed, "search_errors", e.searchErrors,
		"derivations", len(result.Derivations), "duration", time.Since(started))
	return result, nil
}

// parsePatterns parses the request's patterns. Each may itself be a
// comma-separated list.
func parsePatterns(entryPoints []string) ([]attrpath.Pattern, error) {
	var patterns []attrpath.Pattern
	for _, text := range entryPoints {
		list, err := attrpath.ParseList(text)
		if err != nil {
			return nil, err
		}
		patterns = append(patterns, list...)
	}
	if len(patterns) == 0 {
		return nil, fmt.Errorf("%w: give at least one, such as packages.*.*", ErrNoEntryPoints)
	}
	return patterns, nil
}

// entryPoint is an attribute that matched, with its drvPath or an error,
// or a pattern that matched nothing, with an error.
type entryPoint struct {
	path []string
	// pattern is set instead of path for a pattern that matched nothing.
	pattern string
	drvPath string
	err     string
}

// evaluation walks the outputs of one locked flake. It is used by one
// goroutine.
type evaluation struct {
	nix      *nix.Client
	url      string
	patterns []attrpath.Pattern
	progress io.Writer
	// list reports matching derivations without their drvPaths.
	list bool

	entryPoints []entryPoint
	// patternErrors are the patterns that matched nothing.
	patternErrors []entryPoint
	// skipped counts matches that are not derivations and that no
	// pattern names explicitly.
	skipped int
	// searchErrors counts errors below a "**" that no pattern names, and
	// searchErrorPaths are their attribute paths.
	searchErrors     int
	searchErrorPaths [][]string
}

// walkItem is one element of walk.nix's result.
type walkItem struct {
	Path    []string `json:"path"`
	DrvPath string   `json:"drvPath"`
	Listed  bool     `json:"listed"`
	Error   bool     `json:"error"`
	Other   string   `json:"other"`
}

// walk records the entry points at and below path. It first walks the
// subtree in one nix process, in which builtins.tryEval catches throws.
// Other errors, such as a type error or a missing attribute, abort that
// process. Then walk lists the attribute set at path and walks each child
// that a pattern can reach in a process of its own, which narrows the
// error down to the attribute that fails.
func (e *evaluation) walk(ctx context.Context, path []string) error {
	items, walkErr := e.runWalker(ctx, path, false)
	if walkErr == nil {
		return e.collect(ctx, items)
	}
	if _, ok := nixMessage(walkErr); !ok {
		return walkErr
	}

	node, err := e.describe(ctx, path)
	if err != nil {
		return e.fail(path, err)
	}
	if node.Kind != "set" {
		return e.fail(path, walkErr)
	}

	for _, name := range node.Names {
		child := append(slices.Clip(path), name)
		if !e.reachable(child) {
			continue
		}
		if err := e.walk(ctx, child); err != nil {
			return err
		}
	}
	return nil
}

// collect records walk.nix's items. For an attribute whose error tryEval
// caught, it evaluates that attribute again without tryEval to get nix's
// message.
func (e *evaluation) collect(ctx context.Context, items []walkItem) error {
	for _, item := range items {
		switch {
		case item.DrvPath != "" || item.Listed:
			e.entryPoints = append(e.entryPoints, entryPoint{path: item.Path, drvPath: item.DrvPath})
		case item.Error && !e.named(item.Path):
			e.noteSearchError(item.Path, "")
		case item.Error:
			if err := e.explain(ctx, item.Path); err != nil {
				return err
			}
		case item.Other != "":
			e.noteOther(item)
		}
	}
	return nil
}

// explain evaluates the attribute at path strictly, so that its error
// reaches nix's stderr, and records it.
func (e *evaluation) explain(ctx context.Context, path []string) error {
	fmt.Fprintf(e.progress, "evaluating %s again for its error message\n", attrpath.Join(path))
	items, err := e.runWalker(ctx, path, true)
	if err == nil {
		// The error did not happen again; take what the walk found.
		return e.collect(ctx, slices.DeleteFunc(items, func(item walkItem) bool { return item.Error }))
	}
	return e.fail(path, err)
}

// fail records nix's error message for the attribute at path. It returns
// err unchanged when err is not a *nix.Error, such as a cancelled context.
// An error at the root means that the flake's outputs cannot be evaluated
// at all, so the whole evaluation fails with it.
func (e *evaluation) fail(path []string, err error) error {
	message, ok := nixMessage(err)
	if !ok {
		return err
	}
	if len(path) == 0 {
		if strings.Contains(message, "flake input") && strings.Contains(message, "pure mode") {
			// Like Hydra, the worker evaluates in pure mode and writes no
			// lock file, so every input must be locked in flake.lock.
			return fmt.Errorf("evaluate flake outputs of %q: %w (an input is missing from flake.lock: run 'nix flake lock' in the flake and commit flake.lock)", e.url, err)
		}
		return fmt.Errorf("evaluate flake outputs of %q: %w", e.url, err)
	}
	if !e.named(path) {
		e.noteSearchError(path, message)
		return nil
	}
	fmt.Fprintf(e.progress, "error in %s: %s\n", attrpath.Join(path), firstLine(message))
	e.entryPoints = append(e.entryPoints, entryPoint{path: slices.Clone(path), err: message})
	return nil
}

// named reports whether a pattern names path without a "**", so that an
// error there belongs in the result.
func (e *evaluation) named(path []string) bool {
	for _, p := range e.patterns {
		if p.Names(path) {
			return true
		}
	}
	return false
}

// noteSearchError reports an error in an attribute that only a "**"
// reached. It is not an entry point: the pattern searched through it.
func (e *evaluation) noteSearchError(path []string, message string) {
	e.searchErrors++
	e.searchErrorPaths = append(e.searchErrorPaths, slices.Clone(path))
	if message == "" {
		message = "evaluation failed"
	}
	fmt.Fprintf(e.progress, "skipped %s while searching: %s\n", attrpath.Join(path), firstLine(message))
}

// reachable reports whether a pattern matches path or can match below it.
func (e *evaluation) reachable(path []string) bool {
	for _, p := range e.patterns {
		if p.Match(path) || p.CanMatchBelow(path) {
			return true
		}
	}
	return false
}

// runWalker evaluates walk.nix on the subtree at root.
func (e *evaluation) runWalker(ctx context.Context, root []string, strict bool) ([]walkItem, error) {
	args, err := json.Marshal(map[string]any{
		"root":     nonNil(root),
		"strict":   strict,
		"patterns": encodePatterns(e.patterns),
		"list":     e.list,
	})
	if err != nil {
		return nil, fmt.Errorf("encode walk arguments: %w", err)
	}
	expr := "(" + walkExpr + ") " + nix.OutputsExpr(e.url, nil) +
		" (builtins.fromJSON " + nix.QuoteString(string(args)) + ")"

	var items []walkItem
	if err := e.nix.EvalJSON(ctx, expr, &items); err != nil {
		return nil, err
	}
	return items, nil
}

// node describes one value in the flake outputs.
type node struct {
	// Kind is "derivation", "set", or the type name from builtins.typeOf.
	Kind string `json:"kind"`
	// Names are the attribute names of a set.
	Names []string `json:"names"`
}

func (e *evaluation) describe(ctx context.Context, path []string) (node, error) {
	expr := "let v = " + nix.OutputsExpr(e.url, path) + "; in" +
		` if builtins.isAttrs v then (if (v.type or null) == "derivation" then { kind = "derivation"; }` +
		` else { kind = "set"; names = builtins.attrNames v; }) else { kind = builtins.typeOf v; }`
	var n node
	err := e.nix.EvalJSON(ctx, expr, &n)
	return n, err
}

// segmentJSON is a pattern segment as walk.nix takes it.
type segmentJSON struct {
	Kind string `json:"k"`
	Name string `json:"n"`
}

func encodePatterns(patterns []attrpath.Pattern) [][]segmentJSON {
	encoded := make([][]segmentJSON, 0, len(patterns))
	for _, p := range patterns {
		segments := []segmentJSON{}
		for _, s := range p.Segments() {
			switch s.Kind {
			case attrpath.Name:
				segments = append(segments, segmentJSON{Kind: "name", Name: s.Name})
			case attrpath.One:
				segments = append(segments, segmentJSON{Kind: "one"})
			case attrpath.Any:
				segments = append(segments, segmentJSON{Kind: "any"})
			}
		}
		encoded = append(encoded, segments)
	}
	return encoded
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func firstLine(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\n' {
			return s[:i]
		}
	}
	return s
}
