package cache

import (
	"bufio"
	"crypto/sha256"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nar"
	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// largeNARSize is the file size inside the NAR of the large NAR test.
const largeNARSize = 2 << 30

// TestLargeNARBoundedMemory pulls a 2 GiB NAR through the cache from a
// loopback upstream that generates it on the fly, reads it as a client,
// and checks the process's peak resident memory. It writes 2 GiB to the
// temporary directory and takes about a minute, so it runs only with
// GRADIENT_TEST_LARGE_NAR=1.
func TestLargeNARBoundedMemory(t *testing.T) {
	if os.Getenv("GRADIENT_TEST_LARGE_NAR") != "1" {
		t.Skip("set GRADIENT_TEST_LARGE_NAR=1 to run the 2 GiB NAR test")
	}

	narHash, narSize := hashLargeNAR(t)

	u := newFakeUpstream(t)
	info, err := parseNarInfoString("StorePath: /nix/store/" + pullHashA + "-large\n" +
		"URL: nar/large.nar\nCompression: none\n" +
		"NarHash: sha256:" + narHash + "\nNarSize: " + strconv.FormatInt(narSize, 10) + "\nReferences: \n")
	if err != nil {
		t.Fatal(err)
	}

	u.put(info, nil)
	u.setHook(func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/nar/large.nar" {
			return false
		}

		w.Header().Set("Content-Length", strconv.FormatInt(narSize, 10))
		writeLargeNAR(t, w)

		return true
	})

	_, srv := newPullStore(t, u, func(cfg *Config) { cfg.NARIdleTimeout = time.Minute })

	_, body := get(t, srv.URL+"/"+pullHashA+".narinfo")
	local, err := parseNarInfoString(string(body))
	if err != nil {
		t.Fatalf("parse pulled narinfo: %v\n%s", err, body)
	}

	resp, err := http.Get(srv.URL + "/" + local.URL)
	if err != nil {
		t.Fatal(err)
	}

	defer resp.Body.Close()

	h := sha256.New()

	n, err := io.Copy(h, resp.Body)
	if err != nil || n != narSize {
		t.Fatalf("GET large NAR read %d bytes, error %v, want %d bytes", n, err, narSize)
	}

	if got := nixbase32.EncodeToString(h.Sum(nil)); got != narHash {
		t.Errorf("large NAR hashes to %s, want %s", got, narHash)
	}

	peak := peakRSS(t)
	t.Logf("peak RSS of the test process: %d MiB", peak>>20)

	if peak > 200<<20 {
		t.Errorf("peak RSS = %d MiB, want under 200 MiB", peak>>20)
	}
}

// writeLargeNAR writes the NAR of one regular file of largeNARSize bytes
// of a repeating pattern.
func writeLargeNAR(t *testing.T, w io.Writer) {
	nw, err := nar.NewWriter(w)
	if err != nil {
		t.Error(err)
		return
	}

	if err := nw.WriteHeader(&nar.Header{Path: "/", Type: nar.TypeRegular, Size: largeNARSize}); err != nil {
		t.Error(err)
		return
	}

	block := []byte(strings.Repeat("gradient large NAR test block\n", 1<<15))
	for written := 0; written < largeNARSize; {
		n := min(len(block), largeNARSize-written)
		if _, err := nw.Write(block[:n]); err != nil {
			return
		}

		written += n
	}

	nw.Close()
}

func hashLargeNAR(t *testing.T) (string, int64) {
	h := sha256.New()
	counter := &countingWriter{}
	writeLargeNAR(t, io.MultiWriter(h, counter))

	return nixbase32.EncodeToString(h.Sum(nil)), int64(counter.n)
}

// peakRSS returns VmHWM from /proc/self/status in bytes.
func peakRSS(t *testing.T) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}

	defer f.Close()

	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if rest, ok := strings.CutPrefix(scanner.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}

			return kb << 10
		}
	}

	t.Fatal("no VmHWM in /proc/self/status")

	return 0
}
