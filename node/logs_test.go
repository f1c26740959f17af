package node

import (
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

const testDrvPath = "/nix/store/00000000000000000000000000000000-hello.drv"

func readLog(t *testing.T, s *logStore) string {
	t.Helper()
	f, err := s.OpenLog(t.Context(), testDrvPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeAttempt(t *testing.T, s *logStore, at time.Time, worker, text string) {
	t.Helper()
	l, err := s.Open(testDrvPath, at, worker)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(l, text); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestLogKeepsEveryAttempt(t *testing.T) {
	s, err := newLogStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	writeAttempt(t, s, start, "w1", "first attempt output, cut off by a crash")
	writeAttempt(t, s, start.Add(time.Minute), "w2", "second attempt output\n")

	want := "gradient: build attempt started at 2026-01-02T03:04:05Z on worker w1\n" +
		"first attempt output, cut off by a crash\n" +
		"gradient: build attempt started at 2026-01-02T03:05:05Z on worker w2\n" +
		"second attempt output\n"
	if got := readLog(t, s); got != want {
		t.Errorf("log after two attempts = %q, want %q", got, want)
	}
}

func TestLogSizeLimit(t *testing.T) {
	s, err := newLogStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s.maxSize = 200
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

	l, err := s.Open(testDrvPath, start, "w1")
	if err != nil {
		t.Fatal(err)
	}
	line := strings.Repeat("x", 49) + "\n"
	for i := range 10 {
		n, err := io.WriteString(l, line)
		if n != len(line) || err != nil {
			t.Fatalf("write %d = %d, %v, want %d, nil so the build goes on", i, n, err, len(line))
		}
	}
	l.Close()

	got := readLog(t, s)
	cut := "gradient: log cut: it reached the limit of 200 bytes, later output is dropped\n"
	if !strings.HasSuffix(got, cut) {
		t.Errorf("log over the limit ends %q, want the cut notice %q", got[max(0, len(got)-100):], cut)
	}
	if strings.Count(got, cut) != 1 {
		t.Errorf("log has the cut notice %d times, want once", strings.Count(got, cut))
	}
	if len(got) > 200+len(cut)+1 {
		t.Errorf("log size = %d, want at most the limit plus the notice", len(got))
	}

	// A later attempt still writes its start line, and a notice that its
	// output was dropped.
	writeAttempt(t, s, start.Add(time.Minute), "w2", "more output\n")
	got = readLog(t, s)
	if !strings.Contains(got, "on worker w2\n") || strings.Contains(got, "more output") {
		t.Errorf("log after a second attempt over the limit = %q, want its start line and no output", got)
	}
	info, err := os.Stat(s.dir + "/00000000000000000000000000000000-hello.drv.log")
	if err != nil || info.Size() > 600 {
		t.Errorf("log file size = %v, %v, want it bounded near the limit", info, err)
	}
}
