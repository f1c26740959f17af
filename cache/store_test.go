package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nixhash"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/protocol"
)

func TestNewRejectsConfig(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Config)
	}{
		{name: "empty Dir", modify: func(c *Config) { c.Dir = "" }},
		{name: "name with slash", modify: func(c *Config) { c.Name = "a/b" }},
		{name: "missing SecretKey", modify: func(c *Config) { c.SecretKey = "" }},
		{name: "public key as SecretKey", modify: func(c *Config) { c.SecretKey = testPublicKey }},
		{name: "relative StoreDir", modify: func(c *Config) { c.StoreDir = "nix/store" }},
		{name: "unclean StoreDir", modify: func(c *Config) { c.StoreDir = "/nix/store/" }},
		{name: "negative MaxNARSize", modify: func(c *Config) { c.MaxNARSize = -1 }},
		{name: "UploadTTL under a second", modify: func(c *Config) { c.UploadTTL = time.Millisecond }},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Dir: t.TempDir(), SecretKey: testSecretKey}
			tt.modify(&cfg)

			if _, err := New(openTestDB(t), cfg, testLogger(t)); err == nil {
				t.Errorf("New(%s) = nil error, want an error", tt.name)
			}
		})
	}
}

func TestNewDefaults(t *testing.T) {
	s := newTestStore(t, nil)

	if s.Name() != DefaultName {
		t.Errorf("Name() = %q, want %q", s.Name(), DefaultName)
	}

	if s.PublicKey() != testPublicKey {
		t.Errorf("PublicKey() = %q, want %q", s.PublicKey(), testPublicKey)
	}

	if s.StoreDir() != DefaultStoreDir || s.cfg.Priority != DefaultPriority || s.cfg.MaxNARSize != DefaultMaxNARSize {
		t.Errorf("defaults = %q, %d, %d, want %q, %d, %d", s.StoreDir(), s.cfg.Priority, s.cfg.MaxNARSize,
			DefaultStoreDir, DefaultPriority, DefaultMaxNARSize)
	}
}

func TestGenerateKeyPairMatches(t *testing.T) {
	secret, public, err := GenerateKey("gradient-test-1")
	if err != nil {
		t.Fatal(err)
	}

	s := newTestStore(t, func(c *Config) { c.SecretKey = secret })
	if s.PublicKey() != public {
		t.Errorf("PublicKey() of a Store using GenerateKey's secret = %q, want %q", s.PublicKey(), public)
	}
}

func TestNarInfoNotFound(t *testing.T) {
	s := newTestStore(t, nil)

	_, err := s.NarInfo(context.Background(), hashA)
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("NarInfo(unknown) = %v, want ErrNotFound", err)
	}

	if !errors.Is(err, badger.ErrKeyNotFound) {
		t.Errorf("NarInfo(unknown) = %v, want it to wrap badger.ErrKeyNotFound", err)
	}

	if _, err := s.NarInfo(context.Background(), "../../etc"); !errors.Is(err, ErrNotFound) {
		t.Errorf("NarInfo(invalid hash part) = %v, want ErrNotFound", err)
	}
}

func TestHasPathRejectsInvalidPath(t *testing.T) {
	s := newTestStore(t, nil)

	for _, path := range []string{"", "relative", "/gnu/store/" + hashA + "-x", "/nix/store/" + hashA, "/nix/store/" + hashA + "-x/sub"} {
		if _, err := s.HasPath(context.Background(), path); !errors.Is(err, narinfo.ErrInvalidStorePath) {
			t.Errorf("HasPath(%q) = %v, want ErrInvalidStorePath", path, err)
		}
	}
}

func TestPutNARRejectsPathInfo(t *testing.T) {
	narBytes := makeNAR(t, []byte("hello\n"))
	valid := pathInfoFor(hashA, "hello", narBytes)

	tests := []struct {
		name   string
		modify func(*protocol.PathInfo)
		want   string
	}{
		{name: "relative store path", modify: func(p *protocol.PathInfo) { p.StorePath = hashA + "-hello" }, want: "StorePath"},
		{name: "other store dir", modify: func(p *protocol.PathInfo) { p.StorePath = "/gnu/store/" + hashA + "-hello" }, want: "StorePath"},
		{name: "NarHash md5", modify: func(p *protocol.PathInfo) { p.NarHash = "md5:00000000000000000000000000000000" }, want: "NarHash"},
		{name: "NarHash garbage", modify: func(p *protocol.PathInfo) { p.NarHash = "sha256-" }, want: "NarHash"},
		{name: "zero NarSize", modify: func(p *protocol.PathInfo) { p.NarSize = 0 }, want: "NarSize"},
		{name: "base name reference", modify: func(p *protocol.PathInfo) { p.References = []string{hashB + "-dep"} }, want: "References"},
		{name: "bad Deriver", modify: func(p *protocol.PathInfo) { p.Deriver = "/nix/store/x.drv" }, want: "Deriver"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newTestStore(t, nil)
			info := valid
			tt.modify(&info)

			err := s.PutNAR(context.Background(), info, bytes.NewReader(narBytes))

			var fieldErr *narinfo.FieldError
			if !errors.As(err, &fieldErr) || fieldErr.Field != tt.want {
				t.Errorf("PutNAR(%s) = %v, want a FieldError for %s", tt.name, err, tt.want)
			}
		})
	}
}

func TestPutNARAcceptsSRIAndReferences(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)

	depNAR := makeNAR(t, []byte("dep\n"))
	dep := pathInfoFor(hashB, "dep", depNAR)

	topNAR := makeNAR(t, []byte("/nix/store/"+hashB+"-dep\n"))
	top := pathInfoFor(hashA, "top", topNAR, dep.StorePath, "/nix/store/"+hashA+"-top")
	top.Deriver = "/nix/store/" + hashB + "-top.drv"
	top.NarHash = sriFromNix32(t, top.NarHash)

	for _, p := range []struct {
		info protocol.PathInfo
		nar  []byte
	}{{dep, depNAR}, {top, topNAR}} {
		if err := s.PutNAR(ctx, p.info, bytes.NewReader(p.nar)); err != nil {
			t.Fatalf("PutNAR(%s) = %v", p.info.StorePath, err)
		}
	}

	info, err := s.NarInfo(ctx, hashA)
	if err != nil {
		t.Fatal(err)
	}

	wantRefs := []string{hashB + "-dep", hashA + "-top"}
	if strings.Join(info.References, " ") != strings.Join(wantRefs, " ") {
		t.Errorf("NarInfo(top).References = %q, want %q", info.References, wantRefs)
	}

	if info.Deriver != hashB+"-top.drv" {
		t.Errorf("NarInfo(top).Deriver = %q, want %q", info.Deriver, hashB+"-top.drv")
	}
}

func sriFromNix32(t *testing.T, hash string) string {
	t.Helper()

	h, err := narinfo.ParseHash(hash)
	if err != nil {
		t.Fatal(err)
	}

	return h.Format(nixhash.SRI, true)
}

// failingReader fails the test when read, for calls that must not read.
type failingReader struct{ t *testing.T }

func (r failingReader) Read([]byte) (int, error) {
	r.t.Error("PutNAR read the NAR of a path the cache already holds")
	return 0, io.EOF
}

func TestPutNARSkipsStoredPath(t *testing.T) {
	ctx := context.Background()
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))
	info := pathInfoFor(hashA, "hello", narBytes)

	if err := s.PutNAR(ctx, info, bytes.NewReader(narBytes)); err != nil {
		t.Fatal(err)
	}

	if err := s.PutNAR(ctx, info, failingReader{t}); err != nil {
		t.Errorf("PutNAR(stored path) = %v, want nil", err)
	}
}

func TestPutNARRejectsLargeNAR(t *testing.T) {
	s := newTestStore(t, func(c *Config) { c.MaxNARSize = 64 })
	narBytes := makeNAR(t, bytes.Repeat([]byte("x"), 100))

	err := s.PutNAR(context.Background(), pathInfoFor(hashA, "big", narBytes), bytes.NewReader(narBytes))
	if !errors.Is(err, ErrTooLarge) {
		t.Errorf("PutNAR(%d bytes, MaxNARSize 64) = %v, want ErrTooLarge", len(narBytes), err)
	}
}

func TestPutNARStopsOnCancel(t *testing.T) {
	s := newTestStore(t, nil)
	narBytes := makeNAR(t, []byte("hello\n"))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	err := s.PutNAR(ctx, pathInfoFor(hashA, "hello", narBytes), bytes.NewReader(narBytes))
	if !errors.Is(err, context.Canceled) {
		t.Errorf("PutNAR(cancelled ctx) = %v, want context.Canceled", err)
	}

	assertDirEmpty(t, s.tmpDir)
	assertDirEmpty(t, s.narDir)
}

func TestRunStopsOnCancel(t *testing.T) {
	s := newTestStore(t, nil)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)

	go func() { done <- s.Run(ctx) }()

	cancel()

	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Run after cancel = %v, want context.Canceled", err)
	}
}
