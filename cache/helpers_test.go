package cache

import (
	"bytes"
	"crypto/sha256"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/protocol"
)

// testSecretKey and testPublicKey are a fixed key pair so failures are
// reproducible. They sign nothing outside tests.
const (
	testSecretKey = "test-cache-1:ok8oYRQOpYtxCicD/Ocb6fPoRNtTCcSBQxC+gQKfcYT665yCKXpi3SBMprbZFm7QCMHmZYAfLT0DR6HjHZPKsw=="
	testPublicKey = "test-cache-1:+uucgil6Yt0gTKa22RZu0AjB5mWAHy09A0eh4x2TyrM="
)

// fakeClock is a Clock whose time moves only when a test advances it.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()

	c.now = c.now.Add(d)
}

func openTestDB(t testing.TB) *badger.DB {
	t.Helper()

	db, err := badger.Open(badger.DefaultOptions("").WithInMemory(true).WithLogger(nil).
		WithMemTableSize(8 << 20).WithBlockCacheSize(1 << 20))
	if err != nil {
		t.Fatalf("badger.Open: %v", err)
	}

	t.Cleanup(func() { db.Close() })

	return db
}

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newTestStore opens a Store on an in-memory badger and a temporary
// directory. modify may change the config before New.
func newTestStore(t testing.TB, modify func(*Config)) *Store {
	t.Helper()

	cfg := Config{
		Dir:               t.TempDir(),
		SecretKey:         testSecretKey,
		Clock:             &fakeClock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)},
		NoDefaultUpstream: true,
	}
	if modify != nil {
		modify(&cfg)
	}

	s, err := New(openTestDB(t), cfg, testLogger(t))
	if err != nil {
		t.Fatalf("New: %v", err)
	}

	t.Cleanup(func() { s.Close() })

	return s
}

// makeNAR returns the NAR serialisation of a single regular file holding
// contents.
func makeNAR(t testing.TB, contents []byte) []byte {
	t.Helper()

	var buf bytes.Buffer

	w, err := nar.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}

	if err := w.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: int64(len(contents))}); err != nil {
		t.Fatal(err)
	}

	if _, err := w.Write(contents); err != nil {
		t.Fatal(err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

// pathInfoFor describes a NAR as the store path
// /nix/store/<hashPart>-<name>.
func pathInfoFor(hashPart, name string, narBytes []byte, refs ...string) protocol.PathInfo {
	sum := sha256.Sum256(narBytes)

	return protocol.PathInfo{
		StorePath:  "/nix/store/" + hashPart + "-" + name,
		NarHash:    "sha256:" + nixbase32.EncodeToString(sum[:]),
		NarSize:    uint64(len(narBytes)),
		References: refs,
	}
}

func parseNarInfoString(s string) (*narinfo.NarInfo, error) {
	return narinfo.Parse(strings.NewReader(s))
}
