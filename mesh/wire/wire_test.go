package wire

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const hashPart = "3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf"

func seeds(f *testing.F, pattern string) {
	f.Helper()
	paths, err := filepath.Glob(filepath.Join("testdata", pattern))
	if err != nil || len(paths) == 0 {
		f.Fatalf("no testdata files match %s: %v", pattern, err)
	}
	for _, path := range paths {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
}

func TestPathKey(t *testing.T) {
	key := PathKey(hashPart)
	if got, want := key.String(), PathKey(hashPart).String(); got != want {
		t.Errorf("PathKey(%s) = %s then %s, want the same", hashPart, got, want)
	}
	if other := PathKey("00kjynz8n03652qccs76ivsvark3pr3d"); other.Equals(key) {
		t.Errorf("PathKey of two hash parts = %s for both, want different keys", key)
	}
	if key.Prefix().Version != 1 {
		t.Errorf("PathKey(%s).Version = %d, want 1", hashPart, key.Prefix().Version)
	}
}

func TestRequestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteRequest(&buf, Request{HashPart: hashPart}); err != nil {
		t.Fatal(err)
	}
	got, err := ReadRequest(bufio.NewReader(&buf))
	if err != nil || got.HashPart != hashPart {
		t.Errorf("ReadRequest(WriteRequest(%s)) = %+v, %v, want the same hash part", hashPart, got, err)
	}
	if err := WriteRequest(&buf, Request{HashPart: "../etc"}); err == nil {
		t.Errorf("WriteRequest(../etc) = nil error, want an error")
	}
}

func TestReadRequestRejects(t *testing.T) {
	tests := []struct {
		name  string
		input string
	}{
		{"empty", ""},
		{"no newline", "GET " + hashPart},
		{"other verb", "PUT " + hashPart + "\n"},
		{"bad hash part", "GET eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\n"},
		{"store path", "GET /nix/store/" + hashPart + "-x\n"},
		{"long line", "GET " + strings.Repeat("a", 2*MaxLineSize) + "\n"},
	}
	for _, tt := range tests {
		_, err := ReadRequest(bufio.NewReaderSize(strings.NewReader(tt.input), 16))
		if err == nil {
			t.Errorf("ReadRequest(%s) = nil error, want an error", tt.name)
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	tests := []struct {
		in   Response
		want Response
	}{
		{Response{Status: StatusOK, NarInfoSize: 400, FileSize: 1 << 40}, Response{Status: StatusOK, NarInfoSize: 400, FileSize: 1 << 40}},
		{Response{Status: StatusNotFound}, Response{Status: StatusNotFound}},
		{Response{Status: StatusError, Message: "disk\nfull"}, Response{Status: StatusError, Message: "disk?full"}},
		{Response{Status: StatusError, Message: strings.Repeat("x", 1000)}, Response{Status: StatusError, Message: strings.Repeat("x", maxMessageSize)}},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		if err := WriteResponse(&buf, tt.in); err != nil {
			t.Fatalf("WriteResponse(%+v) = %v", tt.in, err)
		}
		got, err := ReadResponse(bufio.NewReader(&buf), 1<<20, 1<<41)
		if err != nil || got != tt.want {
			t.Errorf("ReadResponse(WriteResponse(%+v)) = %+v, %v, want %+v", tt.in, got, err, tt.want)
		}
	}
}

func TestReadResponseRejects(t *testing.T) {
	tests := []struct {
		name  string
		input string
	}{
		{"narinfo over limit", "OK 2000 10\n"},
		{"file over limit", "OK 10 2000\n"},
		{"zero size", "OK 0 10\n"},
		{"negative size", "OK -1 10\n"},
		{"plus sign", "OK +5 10\n"},
		{"leading zero", "OK 05 10\n"},
		{"missing size", "OK 5\n"},
		{"extra field", "OK 5 5 5\n"},
		{"unknown status", "MAYBE\n"},
		{"text after NOT_FOUND", "NOT_FOUND x\n"},
		{"no newline", "NOT_FOUND"},
	}
	for _, tt := range tests {
		_, err := ReadResponse(bufio.NewReader(strings.NewReader(tt.input)), 1000, 1000)
		if err == nil {
			t.Errorf("ReadResponse(%s) = nil error, want an error", tt.name)
		}
	}
}

func TestBuildMessageRoundTrip(t *testing.T) {
	m := BuildMessage{
		Event:   BuildStarted,
		DrvPath: "/nix/store/m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep.drv",
		ETA:     2 * time.Minute,
		TTL:     3 * time.Minute,
	}
	data, err := EncodeBuild(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeBuild(data)
	if err != nil || got.DrvPath != m.DrvPath || got.ETA != m.ETA || got.TTL != m.TTL || got.Event != m.Event {
		t.Errorf("DecodeBuild(EncodeBuild(%+v)) = %+v, %v, want the same", m, got, err)
	}
}

func TestDecodeBuildRejects(t *testing.T) {
	const drv = `"/nix/store/m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep.drv"`
	tests := []struct {
		name  string
		input string
	}{
		{"not a drv", `{"event":"failed","drv_path":"/nix/store/m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep"}`},
		{"relative drv", `{"event":"failed","drv_path":"m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep.drv"}`},
		{"unknown event", `{"event":"paused","drv_path":` + drv + `}`},
		{"started without ttl", `{"event":"started","drv_path":` + drv + `}`},
		{"ttl over an hour", `{"event":"started","drv_path":` + drv + `,"ttl_ns":3600000000001}`},
		{"negative eta", `{"event":"started","drv_path":` + drv + `,"ttl_ns":1,"eta_ns":-1}`},
		{"bad output", `{"event":"succeeded","drv_path":` + drv + `,"outputs":{"out":"/tmp/x"}}`},
		{"two objects", `{"event":"failed","drv_path":` + drv + `} {}`},
		{"too large", `{"event":"failed","drv_path":` + drv + `,"x":"` + strings.Repeat("a", MaxBuildMessageSize) + `"}`},
	}
	for _, tt := range tests {
		_, err := DecodeBuild([]byte(tt.input))
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeBuild(%s) = %v, want ErrMalformed", tt.name, err)
		}
	}
}

// FuzzReadRequest checks that ReadRequest never panics and that what it
// accepts, WriteRequest writes back byte for byte.
func FuzzReadRequest(f *testing.F) {
	seeds(f, "request-*.txt")
	f.Fuzz(func(t *testing.T, data []byte) {
		req, err := ReadRequest(bufio.NewReaderSize(bytes.NewReader(data), 16))
		if err != nil {
			return
		}
		var buf bytes.Buffer
		if err := WriteRequest(&buf, req); err != nil {
			t.Fatalf("WriteRequest(ReadRequest(%q)) = %v", data, err)
		}
		if !bytes.HasPrefix(data, buf.Bytes()) {
			t.Fatalf("WriteRequest(ReadRequest(%q)) = %q, want a prefix of the input", data, buf.Bytes())
		}
	})
}

// FuzzReadResponse checks that ReadResponse never panics and keeps sizes
// within the limits it is given.
func FuzzReadResponse(f *testing.F) {
	seeds(f, "response-*.txt")
	f.Fuzz(func(t *testing.T, data []byte) {
		resp, err := ReadResponse(bufio.NewReaderSize(bytes.NewReader(data), 16), 1000, 1<<20)
		if err != nil {
			return
		}
		if resp.NarInfoSize > 1000 || resp.FileSize > 1<<20 || resp.NarInfoSize < 0 || resp.FileSize < 0 {
			t.Fatalf("ReadResponse(%q) = %+v, want sizes within the limits", data, resp)
		}
		if len(resp.Message) > maxMessageSize {
			t.Fatalf("ReadResponse(%q).Message has %d bytes, want at most %d", data, len(resp.Message), maxMessageSize)
		}
	})
}

// FuzzDecodeBuild checks that DecodeBuild never panics and that what it
// accepts, EncodeBuild encodes and DecodeBuild reads back.
func FuzzDecodeBuild(f *testing.F) {
	seeds(f, "build-*.json")
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := DecodeBuild(data)
		if err != nil {
			return
		}
		encoded, err := EncodeBuild(m)
		if err != nil {
			t.Fatalf("EncodeBuild(DecodeBuild(%q)) = %v", data, err)
		}
		if _, err := DecodeBuild(encoded); err != nil {
			t.Fatalf("DecodeBuild(EncodeBuild(DecodeBuild(%q))) = %v", data, err)
		}
	})
}
