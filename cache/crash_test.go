package cache

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/cache/narinfo"
)

// crashChildEnv makes the test binary run putNARsForever instead of the
// test, with the directory in the variable's value.
const crashChildEnv = "GRADIENT_CACHE_CRASH_CHILD_DIR"

func openDiskDB(t testing.TB, dir string) *badger.DB {
	t.Helper()

	db, err := badger.Open(badger.DefaultOptions(filepath.Join(dir, "db")).WithLogger(nil))
	if err != nil {
		t.Fatalf("badger.Open after kill: %v", err)
	}

	return db
}

// TestPutNARSurvivesKill kills a process that stores NARs in a loop at
// arbitrary points with SIGKILL, and checks after each kill that every
// stored narinfo names a complete NAR file.
func TestPutNARSurvivesKill(t *testing.T) {
	if dir := os.Getenv(crashChildEnv); dir != "" {
		putNARsForever(t, dir)
		return
	}

	dir := t.TempDir()

	for round := range 4 {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPutNARSurvivesKill$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+dir)

		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}

		var stderr bytes.Buffer
		cmd.Stderr = &stderr

		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}

		// Kill after a varying number of stored paths, so the kill lands
		// in a different step of PutNAR each round.
		want := 3 + round*2
		stored := 0

		lines := bufio.NewScanner(stdout)
		for stored < want && lines.Scan() {
			if strings.HasPrefix(lines.Text(), "stored ") {
				stored++
			}
		}

		cmd.Process.Kill()
		cmd.Wait()

		if stored < want {
			t.Fatalf("child stopped after %d stored paths, want %d:\n%s", stored, want, stderr.String())
		}

		checkNarInfosHaveNARs(t, dir)
	}
}

func putNARsForever(t *testing.T, dir string) {
	db := openDiskDB(t, dir)
	defer db.Close()

	s, err := New(db, Config{Dir: filepath.Join(dir, "cache"), SecretKey: testSecretKey, NoDefaultUpstream: true}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}

	ctx := context.Background()

	for i := 0; ; i++ {
		contents := make([]byte, rand.IntN(256<<10))
		for j := range contents {
			contents[j] = byte(rand.IntN(16))
		}

		narBytes := makeNAR(t, contents)
		digest := make([]byte, 20)
		for j := range digest {
			digest[j] = byte(rand.IntN(256))
		}

		info := pathInfoFor(nixbase32.EncodeToString(digest), fmt.Sprintf("crash-%d", i), narBytes)

		if err := s.PutNAR(ctx, info, bytes.NewReader(narBytes)); err != nil {
			t.Fatal(err)
		}

		fmt.Println("stored", info.StorePath)
	}
}

func checkNarInfosHaveNARs(t *testing.T, dir string) {
	t.Helper()

	db := openDiskDB(t, dir)
	defer db.Close()

	prefix := []byte("cache/main/narinfo/")
	count := 0

	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()

		for it.Rewind(); it.Valid(); it.Next() {
			value, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}

			info, err := narinfo.Parse(bytes.NewReader(value))
			if err != nil {
				return fmt.Errorf("stored narinfo %q: %w", it.Item().Key(), err)
			}

			stat, err := os.Stat(filepath.Join(dir, "cache", info.URL))
			if err != nil {
				t.Errorf("narinfo of %s names %s: %v", info.StorePath, info.URL, err)
				continue
			}

			if uint64(stat.Size()) != info.FileSize {
				t.Errorf("NAR %s has %d bytes, its narinfo says FileSize %d", info.URL, stat.Size(), info.FileSize)
			}

			count++
		}

		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if count == 0 {
		t.Errorf("no narinfo stored before the kill, want at least one")
	}
}
