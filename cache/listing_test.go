package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
)

// makeTreeNAR returns the NAR of a directory with a regular file, an
// executable file, a symlink and a subdirectory with an empty file, and
// the contents of each regular file by path.
func makeTreeNAR(t *testing.T) ([]byte, map[string][]byte) {
	t.Helper()

	files := map[string][]byte{
		"/a":       []byte("hello\n"),
		"/run":     []byte("#!/bin/sh\necho hi\n"),
		"/sub/b":   []byte("nested file\n"),
		"/sub/nil": {},
	}

	var buf bytes.Buffer

	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}

	headers := []*nar.Header{
		{Path: "/", Type: nar.TypeDirectory},
		{Path: "/a", Type: nar.TypeRegular, Size: int64(len(files["/a"]))},
		{Path: "/link", Type: nar.TypeSymlink, LinkTarget: "a"},
		{Path: "/run", Type: nar.TypeRegular, Size: int64(len(files["/run"])), Executable: true},
		{Path: "/sub", Type: nar.TypeDirectory},
		{Path: "/sub/b", Type: nar.TypeRegular, Size: int64(len(files["/sub/b"]))},
		{Path: "/sub/nil", Type: nar.TypeRegular},
	}

	for _, header := range headers {
		if err := w.WriteHeader(header); err != nil {
			t.Fatal(err)
		}

		if header.Type == nar.TypeRegular {
			if _, err := w.Write(files[header.Path]); err != nil {
				t.Fatal(err)
			}
		}
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes(), files
}

// TestListNAROffsets checks every field of a listing and that each
// regular file's narOffset points at its contents in the NAR.
func TestListNAROffsets(t *testing.T) {
	narBytes, files := makeTreeNAR(t)

	root, err := listNAR("none", bytes.NewReader(narBytes))
	if err != nil {
		t.Fatalf("listNAR: %v", err)
	}

	if root.Type != "directory" {
		t.Fatalf("root type = %q, want directory", root.Type)
	}

	if link := root.Entries["link"]; link == nil || link.Type != "symlink" || link.Target != "a" {
		t.Errorf("entry link = %+v, want a symlink to a", link)
	}

	if run := root.Entries["run"]; run == nil || !run.Executable {
		t.Errorf("entry run = %+v, want an executable file", run)
	}

	if a := root.Entries["a"]; a == nil || a.Executable {
		t.Errorf("entry a = %+v, want a file that is not executable", a)
	}

	for path, contents := range files {
		node := root
		for _, name := range strings.Split(strings.TrimPrefix(path, "/"), "/") {
			node = node.Entries[name]
			if node == nil {
				break
			}
		}

		if node == nil || node.Type != "regular" {
			t.Errorf("listing of %s = %+v, want a regular file", path, node)
			continue
		}

		if node.Size == nil || *node.Size != int64(len(contents)) {
			t.Errorf("size of %s = %v, want %d", path, node.Size, len(contents))
		}

		if node.NarOffset == nil {
			t.Errorf("narOffset of %s is missing", path)
			continue
		}

		end := *node.NarOffset + int64(len(contents))
		if end > int64(len(narBytes)) || !bytes.Equal(narBytes[*node.NarOffset:end], contents) {
			t.Errorf("NAR bytes at narOffset %d of %s differ from the file's contents %q", *node.NarOffset, path, contents)
		}
	}
}

// TestListingMatchesNix compares the listing the cache serves for a NAR
// with the listing nix copy writes for the same NAR with
// write-nar-listing=true.
func TestListingMatchesNix(t *testing.T) {
	env := requireNix(t)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	src := filepath.Join(env.home, "tree")
	if err := os.MkdirAll(filepath.Join(src, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}

	for name, contents := range map[string]string{"a": "hello\n", "run": "#!/bin/sh\necho hi\n", "sub/b": "nested\n"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(contents), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	if err := os.Chmod(filepath.Join(src, "run"), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.Symlink("a", filepath.Join(src, "link")); err != nil {
		t.Fatal(err)
	}

	store := env.newStoreDir()

	stdout, stderr, err := env.run(ctx, store, "store", "add-path", "--name", "listing-tree", src)
	if err != nil {
		t.Fatalf("nix store add-path: %v\n%s", err, stderr)
	}

	storePath := strings.TrimSpace(stdout)
	hashPart, name, _ := strings.Cut(filepath.Base(storePath), "-")
	out := t.TempDir()

	_, stderr, err = env.run(ctx, store, "copy", "--to", "file://"+out+"?write-nar-listing=true&compression=none", storePath)
	if err != nil {
		t.Fatalf("nix copy --to file://: %v\n%s", err, stderr)
	}

	nixListing, err := os.ReadFile(filepath.Join(out, hashPart+".ls"))
	if err != nil {
		t.Fatalf("read the listing nix wrote: %v", err)
	}

	narFiles, err := filepath.Glob(filepath.Join(out, "nar", "*.nar"))
	if err != nil || len(narFiles) != 1 {
		t.Fatalf("NAR files nix wrote = %q, %v, want one", narFiles, err)
	}

	narBytes, err := os.ReadFile(narFiles[0])
	if err != nil {
		t.Fatal(err)
	}

	s, srv := newPullStore(t, newFakeUpstream(t), nil)
	if err := s.PutNAR(ctx, pathInfoFor(hashPart, name, narBytes), bytes.NewReader(narBytes)); err != nil {
		t.Fatalf("PutNAR: %v", err)
	}

	resp, ourListing := get(t, srv.URL+"/"+hashPart+".ls")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s.ls = %d %q, want 200", hashPart, resp.StatusCode, ourListing)
	}

	var want, got any
	if err := json.Unmarshal(nixListing, &want); err != nil {
		t.Fatalf("decode the listing nix wrote %q: %v", nixListing, err)
	}

	if err := json.Unmarshal(ourListing, &got); err != nil {
		t.Fatalf("decode the served listing %q: %v", ourListing, err)
	}

	if !reflect.DeepEqual(got, want) {
		t.Errorf("GET %s.ls = %s, want the listing nix wrote: %s", hashPart, ourListing, nixListing)
	}
}

// FuzzListNAR checks that listNAR accepts exactly the archives that the
// NAR checker accepts, and that every narOffset of an accepted archive
// lies inside it.
func FuzzListNAR(f *testing.F) {
	for _, data := range narTestdata(f) {
		f.Add(data)
	}

	f.Add(narTokens(directoryNAR("a", "b")...))

	f.Fuzz(func(t *testing.T, data []byte) {
		root, err := listNAR("none", bytes.NewReader(data))
		checkErr := checkNARBytes(data)

		if (err == nil) != (checkErr == nil) {
			t.Fatalf("listNAR error = %v, want an error exactly when the checker returns one (%v)", err, checkErr)
		}

		if err != nil {
			return
		}

		var walk func(name string, node *listingNode)
		walk = func(name string, node *listingNode) {
			if node.Type == "regular" {
				if node.NarOffset == nil || node.Size == nil {
					t.Fatalf("regular file %s has narOffset %v and size %v, want both", name, node.NarOffset, node.Size)
				}

				if *node.NarOffset < 0 || *node.NarOffset+*node.Size > int64(len(data)) {
					t.Errorf("file %s at narOffset %d with size %d ends past the archive's %d bytes", name, *node.NarOffset, *node.Size, len(data))
				}
			}

			for entry, child := range node.Entries {
				walk(name+"/"+entry, child)
			}
		}

		walk("", root)
	})
}
