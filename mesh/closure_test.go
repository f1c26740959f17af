package mesh

import (
	"context"
	"errors"
	"fmt"
	"path"
	"testing"
	"time"
)

// putChain stores a chain of count paths in c, each referring to the
// next, and returns them, the top first.
func putChain(c *memCache, name string, count int) []string {
	paths := make([]string, count)
	for i := range paths {
		paths[i] = storePath(fmt.Sprintf("%s-%d", name, i))
	}

	for i := count - 1; i >= 0; i-- {
		var refs []string
		if i+1 < count {
			refs = []string{path.Base(paths[i+1])}
		}
		// A path may refer to itself, which needs no fetch.
		refs = append(refs, path.Base(paths[i]))
		c.put(paths[i], []byte("contents of "+paths[i]), refs, c.key)
	}

	return paths
}

func TestFetchCopiesReferencesFirst(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	a, c := m.nodes[0], m.nodes[1]

	// top refers to lib and to shared, and lib refers to shared too.
	shared := storePath("shared")
	lib := storePath("lib")
	top := storePath("top")
	a.cache.put(shared, []byte("shared"), nil, a.cache.key)
	a.cache.put(lib, []byte("lib"), []string{path.Base(shared)}, a.cache.key)
	a.cache.put(top, []byte("top"), []string{path.Base(lib), path.Base(shared)}, a.cache.key)

	from, err := c.Fetch(context.Background(), top, c.cache, a.ID())
	if err != nil || from != a.ID() {
		t.Fatalf("Fetch(top) = %s, %v, want A", from, err)
	}

	for _, p := range []string{shared, lib, top} {
		if got, ok := c.cache.file(p); !ok || string(got) != path.Base(p)[33:] {
			t.Errorf("C's NAR of %s = %q, %v, want A's", p, got, ok)
		}
	}
}

func TestFetchReferenceLimits(t *testing.T) {
	tests := []struct {
		name     string
		chain    int
		maxDepth int
		maxPaths int
		wantErr  error
	}{
		{"within limits", 5, 4, 4, nil},
		{"too deep", 5, 3, 100, ErrClosureTooLarge},
		{"too many paths", 5, 100, 3, ErrClosureTooLarge},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := newTestMesh(t, 2, meshOptions{})
			a, c := m.nodes[0], m.nodes[1]
			c.cfg.MaxReferenceDepth = tc.maxDepth
			c.cfg.MaxClosurePaths = tc.maxPaths

			chain := putChain(a.cache, "chain", tc.chain)

			_, err := c.Fetch(context.Background(), chain[0], c.cache, a.ID())
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Fetch(chain of %d) = %v, want %v", tc.chain, err, tc.wantErr)
			}

			if _, ok := c.cache.file(chain[0]); ok != (tc.wantErr == nil) {
				t.Errorf("C holds the top of the chain = %v, want %v", ok, tc.wantErr == nil)
			}
		})
	}
}

func TestFetchMissingReferenceIsNotFound(t *testing.T) {
	m := newTestMesh(t, 2, meshOptions{})
	a, c := m.nodes[0], m.nodes[1]
	c.cfg.LookupTimeout = 200 * time.Millisecond

	// A holds the path but not its reference, which no cache.Store
	// allows, so no peer serves the reference.
	top := storePath("orphan")
	a.cache.put(top, []byte("orphan"), []string{path.Base(storePath("gone"))}, a.cache.key)

	_, err := c.Fetch(context.Background(), top, c.cache, a.ID())
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("Fetch(path with a lost reference) = %v, want ErrNotFound", err)
	}

	if _, ok := c.cache.file(top); ok {
		t.Error("C stored the path without its reference")
	}
}
