package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// The files in testdata/nar were written by nix-store --dump of nix 2.8.
// tree.nar is a directory with nested directories, an executable, an
// empty file, an empty directory and symlinks. Its entries "a", "a-b"
// and "a.b" put the files inside "a" before "a-b", although "/a-b" sorts
// before "/a/z" as a whole path. The other files are a single
// executable, symlink and empty file.

// narTestdata returns the NARs that nix wrote, by file name, together
// with the NARs of the nix copy testdata.
func narTestdata(t testing.TB) map[string][]byte {
	t.Helper()

	nars := map[string][]byte{}

	for _, pattern := range []string{"testdata/nar/*.nar", "testdata/none/nar/*.nar"} {
		paths, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}

		for _, path := range paths {
			nars[path] = mustReadFile(t, path)
		}
	}

	if len(nars) < 6 {
		t.Fatalf("found %d NARs in testdata, want at least 6", len(nars))
	}

	return nars
}

// narTokens encodes tokens as the length-prefixed, zero-padded strings
// of the NAR format.
func narTokens(tokens ...string) []byte {
	var b bytes.Buffer

	for _, token := range tokens {
		b.Write(binary.LittleEndian.AppendUint64(nil, uint64(len(token))))
		b.WriteString(token)
		b.Write(make([]byte, (8-len(token)%8)%8))
	}

	return b.Bytes()
}

func symlinkNode(target string) []string {
	return []string{"(", "type", "symlink", "target", target, ")"}
}

// directoryNAR returns the tokens of a NAR whose root directory has one
// symlink entry per name, in the given order.
func directoryNAR(names ...string) []string {
	tokens := []string{"nix-archive-1", "(", "type", "directory"}

	for _, name := range names {
		tokens = append(tokens, "entry", "(", "name", name, "node")
		tokens = append(tokens, symlinkNode("x")...)
		tokens = append(tokens, ")")
	}

	return append(tokens, ")")
}

// nestedNAR returns a NAR of depth nested directories.
func nestedNAR(depth int) []byte {
	var b bytes.Buffer

	b.Write(narTokens("nix-archive-1", "(", "type", "directory"))

	for range depth {
		b.Write(narTokens("entry", "(", "name", "d", "node", "(", "type", "directory"))
	}

	for range depth {
		b.Write(narTokens(")", ")"))
	}

	b.Write(narTokens(")"))

	return b.Bytes()
}

func checkNARBytes(data []byte) error {
	formatErr, err := checkNARStream(bytes.NewReader(data))
	if err != nil {
		return err
	}

	return formatErr
}

func TestCheckNARStreamAccepts(t *testing.T) {
	nars := narTestdata(t)
	nars["makeNAR"] = makeNAR(t, []byte("hello\n"))
	nars["2047 nested directories"] = nestedNAR(narMaxDepth - 1)

	for name, data := range nars {
		t.Run(name, func(t *testing.T) {
			if err := checkNARBytes(data); err != nil {
				t.Errorf("checkNARStream(%s) = %v, want nil", name, err)
			}
		})
	}
}

func TestCheckNARStreamRejects(t *testing.T) {
	valid := mustReadFile(t, "testdata/nar/tree.nar")

	badPadding := narTokens("nix-archive-1", "(", "type", "symlink", "target", "abc", ")")
	badPadding[len(narTokens("nix-archive-1", "(", "type", "symlink", "target"))+8+3] = 1

	tests := []struct {
		name string
		data []byte
		want string
	}{
		{name: "empty", data: nil, want: "ends early"},
		{name: "random bytes", data: randomBytes(t, 1000), want: "magic string"},
		{name: "magic only", data: narTokens("nix-archive-1"), want: "ends early"},
		{name: "other magic", data: narTokens("nix-archive-2"), want: "nix-archive-2"},
		{name: "node without type", data: narTokens("nix-archive-1", "(", "type", ")"), want: "unknown node type"},
		{name: "unknown type", data: narTokens("nix-archive-1", "(", "type", "fifo", ")"), want: `"fifo"`},
		{name: "junk in directory", data: narTokens("nix-archive-1", "(", "type", "directory", "junk", ")"), want: `found "junk"`},
		{name: "empty name", data: narTokens(directoryNAR("")...), want: "invalid file name"},
		{name: "dot", data: narTokens(directoryNAR(".")...), want: "invalid file name"},
		{name: "dot dot", data: narTokens(directoryNAR("..")...), want: "invalid file name"},
		{name: "slash in name", data: narTokens(directoryNAR("a/b")...), want: "invalid file name"},
		{name: "NUL in name", data: narTokens(directoryNAR("a\x00")...), want: "invalid file name"},
		{name: "name too long", data: narTokens(directoryNAR(strings.Repeat("n", 256))...), want: "file name of 256 bytes"},
		{name: "duplicate name", data: narTokens(directoryNAR("a", "a")...), want: "sorted"},
		{name: "unsorted names", data: narTokens(directoryNAR("b", "a")...), want: `"a" follows "b"`},
		{name: "trailing data", data: append(append([]byte{}, valid...), narTokens("x")...), want: "16 bytes after the end"},
		{name: "truncated", data: valid[:len(valid)-8], want: "ends early"},
		{name: "non-zero padding", data: badPadding, want: "padding"},
		{name: "empty symlink target", data: narTokens(append([]string{"nix-archive-1"}, symlinkNode("")...)...), want: "symlink target"},
		{name: "symlink target too long", data: narTokens(append([]string{"nix-archive-1"}, symlinkNode(strings.Repeat("t", 4096))...)...), want: "symlink target of 4096 bytes"},
		{
			name: "executable marker with a value",
			data: narTokens("nix-archive-1", "(", "type", "regular", "executable", "yes", "contents", "", ")"),
			want: "executable marker",
		},
		{
			name: "contents longer than the archive",
			data: append(narTokens("nix-archive-1", "(", "type", "regular", "contents"), binary.LittleEndian.AppendUint64(nil, 1<<40)...),
			want: "ends early",
		},
		{name: "too deep", data: nestedNAR(narMaxDepth + 1), want: "deeper than 2048"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkNARBytes(tt.data)
			if !errors.Is(err, ErrInvalidNAR) {
				t.Fatalf("checkNARStream(%s) = %v, want an error wrapping ErrInvalidNAR", tt.name, err)
			}

			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("checkNARStream(%s) = %v, want it to contain %q", tt.name, err, tt.want)
			}
		})
	}
}

func TestCheckNARStreamNamesPath(t *testing.T) {
	tokens := []string{"nix-archive-1", "(", "type", "directory", "entry", "(", "name", "sub", "node"}
	tokens = append(tokens, directoryNAR("b", "a")[1:]...)
	tokens = append(tokens, ")", ")")

	err := checkNARBytes(narTokens(tokens...))
	if err == nil || !strings.Contains(err.Error(), `in "/sub"`) {
		t.Errorf("checkNARStream(unsorted /sub) = %v, want it to name \"/sub\"", err)
	}
}

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestCheckNARStreamReturnsReadError(t *testing.T) {
	readErr := errors.New("connection reset")
	valid := mustReadFile(t, "testdata/nar/tree.nar")

	formatErr, err := checkNARStream(io.MultiReader(bytes.NewReader(valid[:100]), errReader{readErr}))
	if !errors.Is(err, readErr) || formatErr != nil {
		t.Errorf("checkNARStream(cut by a read error) = %v, %v, want nil, %v", formatErr, err, readErr)
	}
}

// randomNARUpload returns 1000 random bytes and a path info whose NarHash
// and NarSize match them.
func randomNARUpload(t *testing.T) ([]byte, string, uint64) {
	data := randomBytes(t, 1000)
	sum := sha256.Sum256(data)

	return data, "sha256:" + nixbase32.EncodeToString(sum[:]), uint64(len(data))
}

func TestPutNARRejectsInvalidNAR(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)

	data, _, _ := randomNARUpload(t)
	info := pathInfoFor(hashA, "random", data)

	err := s.PutNAR(ctx, info, bytes.NewReader(data))
	if !errors.Is(err, ErrInvalidNAR) {
		t.Fatalf("PutNAR(1000 random bytes) = %v, want an error wrapping ErrInvalidNAR", err)
	}

	if has, err := s.HasPath(ctx, info.StorePath); err != nil || has {
		t.Errorf("HasPath after a rejected PutNAR = %v, %v, want false, nil", has, err)
	}

	assertDirEmpty(t, s.narDir)
	assertDirEmpty(t, s.tmpDir)
}

func TestUploadRejectsInvalidNAR(t *testing.T) {
	s := newTestStore(t, nil)
	srv := uploadServer(t, s)

	data, narHash, narSize := randomNARUpload(t)
	fileName := strings.TrimPrefix(narHash, "sha256:") + ".nar"
	narInfo := fmt.Sprintf("StorePath: /nix/store/%s-random\nURL: nar/%s\nCompression: none\nNarHash: %s\nNarSize: %d\nReferences: \n",
		hashA, fileName, narHash, narSize)

	if resp, body := put(t, srv.URL+"/nar/"+fileName, data); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT nar/%s = %d %q, want 200", fileName, resp.StatusCode, body)
	}

	resp, body := put(t, srv.URL+"/"+hashA+".narinfo", []byte(narInfo))
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "invalid NAR archive") {
		t.Errorf("PUT narinfo of 1000 random bytes = %d %q, want 400 saying the NAR archive is invalid", resp.StatusCode, body)
	}

	if _, err := s.NarInfo(context.Background(), hashA); !errors.Is(err, ErrNotFound) {
		t.Errorf("NarInfo after a rejected upload = %v, want ErrNotFound", err)
	}

	assertDirEmpty(t, s.narDir)
}

func TestPullRejectsInvalidNAR(t *testing.T) {
	u := newFakeUpstream(t)
	info, _ := u.addPath(pullHashA, "random", []byte("placeholder\n"))

	data, narHash, narSize := randomNARUpload(t)

	var err error

	info.NarHash, err = narinfo.ParseHash(narHash)
	if err != nil {
		t.Fatal(err)
	}

	info.NarSize = narSize
	u.put(info, data)

	s, srv := newPullStore(t, u, nil)

	resp, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET narinfo = %d %q, want 200", resp.StatusCode, body)
	}

	local, err := parseNarInfoString(string(body))
	if err != nil {
		t.Fatal(err)
	}

	res, err := http.Get(srv.URL + "/" + local.URL)
	if err == nil {
		got, readErr := io.ReadAll(res.Body)
		res.Body.Close()

		if res.StatusCode == http.StatusOK && readErr == nil {
			t.Errorf("GET NAR of 1000 random bytes = 200 with %d complete bytes, want an error", len(got))
		}
	}

	assertNoNARFiles(t, s)

	if _, err := os.Stat(filepath.Join(s.narDir, local.URL[len("nar/"):])); err == nil {
		t.Errorf("the random NAR was stored")
	}
}

// FuzzCheckNARStream checks that the checker never panics, returns only
// format errors for bytes in memory, and rejects an accepted archive once
// its last byte, padding of the root's closing ")", is flipped.
func FuzzCheckNARStream(f *testing.F) {
	for _, data := range narTestdata(f) {
		f.Add(data)
	}

	f.Add(narTokens(directoryNAR("a", "b")...))

	f.Fuzz(func(t *testing.T, data []byte) {
		formatErr, err := checkNARStream(bytes.NewReader(data))
		if err != nil {
			t.Fatalf("checkNARStream on a bytes.Reader = read error %v, want none", err)
		}

		if formatErr != nil && !errors.Is(formatErr, ErrInvalidNAR) {
			t.Errorf("checkNARStream = %v, want nil or an error wrapping ErrInvalidNAR", formatErr)
		}

		if formatErr == nil && len(data) >= 8 {
			tail := bytes.Clone(data)
			tail[len(tail)-1] ^= 0xff

			if err := checkNARBytes(tail); err == nil {
				t.Errorf("checkNARStream accepts an archive with its last byte flipped")
			}
		}
	})
}
