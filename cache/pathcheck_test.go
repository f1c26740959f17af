package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/protocol"
)

// storedState is what a rejected or repeated put must leave unchanged.
type storedState struct {
	narInfo  string
	narFiles []string
}

func readStoredState(t *testing.T, s *Store, hashPart string) storedState {
	t.Helper()

	data, err := s.narInfoBytes(context.Background(), hashPart)
	if err != nil {
		t.Fatalf("read narinfo %s: %v", hashPart, err)
	}

	entries, err := os.ReadDir(s.narDir)
	if err != nil {
		t.Fatal(err)
	}

	state := storedState{narInfo: string(data)}
	for _, e := range entries {
		state.narFiles = append(state.narFiles, e.Name())
	}

	return state
}

func assertStoredState(t *testing.T, s *Store, hashPart string, want storedState) {
	t.Helper()

	got := readStoredState(t, s, hashPart)

	if got.narInfo != want.narInfo {
		t.Errorf("stored narinfo changed:\n%s\nwant\n%s", got.narInfo, want.narInfo)
	}

	if fmt.Sprint(got.narFiles) != fmt.Sprint(want.narFiles) {
		t.Errorf("NAR files = %q, want %q", got.narFiles, want.narFiles)
	}
}

func TestPutNARKeepsStoredPath(t *testing.T) {
	narBytes := makeNAR(t, []byte("hello\n"))
	otherBytes := makeNAR(t, []byte("other contents\n"))
	stored := pathInfoFor(hashA, "hello", narBytes)
	stored.Deriver = "/nix/store/" + hashB + "-hello.drv"

	otherDeriver := stored
	otherDeriver.Deriver = "/nix/store/" + hashA + "-hello.drv"

	otherHash := pathInfoFor(hashA, "hello", otherBytes)

	otherSize := stored
	otherSize.NarSize++

	tests := []struct {
		name     string
		info     protocol.PathInfo
		nar      []byte
		wantErr  error
		wantText []string
	}{
		{name: "same NarHash", info: stored, nar: narBytes},
		{name: "same NarHash, other Deriver", info: otherDeriver, nar: narBytes},
		{
			name: "other NarHash", info: otherHash, nar: otherBytes, wantErr: ErrConflict,
			wantText: []string{stored.StorePath, stored.NarHash, otherHash.NarHash},
		},
		{
			name: "same NarHash, other NarSize", info: otherSize, nar: narBytes, wantErr: ErrHashMismatch,
			wantText: []string{"NarSize"},
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			s := newTestStore(t, nil)

			if err := s.PutNAR(ctx, stored, bytes.NewReader(narBytes)); err != nil {
				t.Fatal(err)
			}

			before := readStoredState(t, s, hashA)

			err := s.PutNAR(ctx, tt.info, bytes.NewReader(tt.nar))

			switch {
			case tt.wantErr == nil && err != nil:
				t.Errorf("PutNAR(%s) = %v, want nil", tt.name, err)
			case tt.wantErr != nil && !errors.Is(err, tt.wantErr):
				t.Errorf("PutNAR(%s) = %v, want an error wrapping %v", tt.name, err, tt.wantErr)
			}

			for _, text := range tt.wantText {
				if err == nil || !strings.Contains(err.Error(), text) {
					t.Errorf("PutNAR(%s) = %v, want it to name %q", tt.name, err, text)
				}
			}

			assertStoredState(t, s, hashA, before)
			assertDirEmpty(t, s.tmpDir)
		})
	}
}

func TestPutNARConcurrentConflict(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)

	const writers = 8

	infos := make([]protocol.PathInfo, writers)
	nars := make([][]byte, writers)

	for i := range writers {
		nars[i] = makeNAR(t, []byte(fmt.Sprintf("contents %d\n", i)))
		infos[i] = pathInfoFor(hashA, "racy", nars[i])
	}

	errs := make([]error, writers)

	var wg sync.WaitGroup

	for i := range writers {
		wg.Go(func() { errs[i] = s.PutNAR(ctx, infos[i], bytes.NewReader(nars[i])) })
	}

	wg.Wait()

	winner := -1

	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("PutNAR(writer %d) = nil after writer %d succeeded, want ErrConflict", i, winner)
		case err == nil:
			winner = i
		case !errors.Is(err, ErrConflict):
			t.Errorf("PutNAR(writer %d) = %v, want nil or ErrConflict", i, err)
		}
	}

	if winner < 0 {
		t.Fatal("every PutNAR failed, want one to succeed")
	}

	stored, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatal(err)
	}

	if got := formatNix32(stored.NarHash); got != infos[winner].NarHash {
		t.Errorf("stored NarHash = %s, want the successful writer's %s", got, infos[winner].NarHash)
	}

	entries, err := os.ReadDir(s.narDir)
	if err != nil {
		t.Fatal(err)
	}

	if len(entries) != 1 {
		t.Errorf("nar directory has %d files, want 1", len(entries))
	}

	assertDirEmpty(t, s.tmpDir)
}

func TestPutNARRejectsMissingReference(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)

	depPath := "/nix/store/" + hashB + "-dep"
	topNAR := makeNAR(t, []byte(depPath+"\n"))
	top := pathInfoFor(hashA, "top", topNAR, depPath, "/nix/store/"+hashA+"-top")

	err := s.PutNAR(ctx, top, failingReader{t})
	if !errors.Is(err, ErrMissingReference) {
		t.Fatalf("PutNAR(top before dep) = %v, want an error wrapping ErrMissingReference", err)
	}

	if !strings.Contains(err.Error(), depPath) {
		t.Errorf("PutNAR(top before dep) = %v, want it to name %q", err, depPath)
	}

	_, listed, _ := strings.Cut(err.Error(), ErrMissingReference.Error())
	if strings.Contains(listed, hashA+"-top") {
		t.Errorf("PutNAR(top before dep) = %v, want the self-reference left out", err)
	}

	if has, err := s.HasPath(ctx, top.StorePath); err != nil || has {
		t.Errorf("HasPath(top) after a rejected PutNAR = %v, %v, want false, nil", has, err)
	}

	assertDirEmpty(t, s.narDir)
	assertDirEmpty(t, s.tmpDir)

	depNAR := makeNAR(t, []byte("dep\n"))
	if err := s.PutNAR(ctx, pathInfoFor(hashB, "dep", depNAR), bytes.NewReader(depNAR)); err != nil {
		t.Fatal(err)
	}

	if err := s.PutNAR(ctx, top, bytes.NewReader(topNAR)); err != nil {
		t.Errorf("PutNAR(top after dep) = %v, want nil", err)
	}
}

func TestUploadKeepsStoredPath(t *testing.T) {
	s := newTestStore(t, nil)
	srv := uploadServer(t, s)
	dep := loadUpload(t, "xz", depHash)
	dep.put(t, srv)

	before := readStoredState(t, s, depHash)

	// nix copy uploads a path again when it did not ask first.
	dep.put(t, srv)
	assertStoredState(t, s, depHash, before)

	otherDeriver := strings.Replace(dep.narInfo, "Deriver: m0mir", "Deriver: 00bgd", 1)
	if resp, body := put(t, srv.URL+"/"+depHash+".narinfo", []byte(otherDeriver)); resp.StatusCode != http.StatusOK {
		t.Errorf("PUT narinfo with another Deriver = %d %q, want 200", resp.StatusCode, body)
	}

	assertStoredState(t, s, depHash, before)

	// Other contents under the same store path, uploaded as nix does.
	otherNAR := makeNAR(t, []byte("other contents\n"))
	fileSum := sha256.Sum256(otherNAR)
	fileName := nixbase32.EncodeToString(fileSum[:]) + ".nar"
	other := pathInfoFor(depHash, "gradient-dep", otherNAR)
	otherNarInfo := fmt.Sprintf("StorePath: %s\nURL: nar/%s\nCompression: none\nNarHash: %s\nNarSize: %d\nReferences: \n",
		depPath, fileName, other.NarHash, other.NarSize)

	if resp, body := put(t, srv.URL+"/nar/"+fileName, otherNAR); resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT other NAR = %d %q, want 200", resp.StatusCode, body)
	}

	resp, body := put(t, srv.URL+"/"+depHash+".narinfo", []byte(otherNarInfo))
	if resp.StatusCode != http.StatusConflict {
		t.Errorf("PUT narinfo with another NarHash = %d %q, want 409", resp.StatusCode, body)
	}

	storedInfo, err := parseNarInfoString(before.narInfo)
	if err != nil {
		t.Fatal(err)
	}

	for _, text := range []string{depPath, formatNix32(storedInfo.NarHash), other.NarHash} {
		if !strings.Contains(body, text) {
			t.Errorf("PUT narinfo with another NarHash body = %q, want it to name %q", body, text)
		}
	}

	assertStoredState(t, s, depHash, before)
}
