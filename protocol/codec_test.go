package protocol

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

var updateSeeds = flag.Bool("update", false, "rewrite testdata/frames from sampleMessages")

// sampleMessages has one valid message of every type.
func sampleMessages() []Message {
	info := PathInfo{
		StorePath:  "/nix/store/00000000000000000000000000000000-a",
		NarHash:    "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
		NarSize:    120,
		References: []string{"/nix/store/00000000000000000000000000000000-a"},
	}
	return []Message{
		&Hello{Version: Version, Capabilities: []Capability{CapEval, CapBuild}, Systems: []string{"x86_64-linux"}, Features: []string{"kvm"}, MaxJobs: 2, CPUs: 4, MemoryBytes: 8 << 30},
		&Welcome{Version: Version, WorkerID: "w1", HeartbeatMillis: 5000, LeaseMillis: 30000, CachePath: "/cache/main", CachePublicKey: "k-1:abc", JobBuilt: true},
		&Reject{Reason: "protocol version 0 is not supported"},
		&Heartbeat{RunningJobs: 1, Load1: 0.5, FreeDiskBytes: 1 << 30},
		&JobOffer{Job: 1, Eval: &EvalRequest{FlakeRef: "path:/src", EntryPoints: []string{"packages.*.*"}, ListOnly: true}},
		&JobOffer{Job: 2, Build: &BuildRequest{DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"}},
		&JobAccept{Job: 1},
		&JobDecline{Job: 1, Reason: "busy"},
		&JobAbort{Job: 1},
		&LogChunk{Job: 1, Data: []byte("building\n")},
		&JobBuilt{Job: 2},
		&JobResult{Job: 1, Eval: &EvalResult{
			Flake:       LockedFlake{OriginalURL: "path:/src", LockedURL: "path:/src?narHash=x"},
			EntryPoints: []EntryPoint{{Attr: "packages.x.a", DrvPath: "/nix/store/00000000000000000000000000000000-a.drv"}},
			Derivations: []Derivation{{DrvPath: "/nix/store/00000000000000000000000000000000-a.drv", Name: "a", System: "x86_64-linux", Outputs: map[string]string{"out": info.StorePath}, ParallelBuilding: true}},
		}},
		&JobResult{Job: 2, Build: &BuildResult{Outputs: map[string]PathInfo{"out": info}}},
		&JobResult{Job: 3, Error: &JobError{BuildFailed: true, Message: "builder failed with exit code 1"}},
		&PathQuery{ID: 1, Job: 2, Paths: []string{info.StorePath}},
		&PathAnswer{ID: 1, Have: []string{info.StorePath}, MissingNarSize: 10},
		&NARBegin{Upload: 1, Job: 2, Info: info, Compression: "zstd", FileSize: 64, FileHash: strings.Repeat("ab", 32)},
		&NAROffset{Upload: 1, Offset: 32},
		&NARChunk{Upload: 1, Offset: 32, Data: []byte("zstd bytes")},
		&NARStored{Upload: 1},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		frame, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(%s) = %v", m.Type(), err)
		}
		got, err := Decode(frame)
		if err != nil {
			t.Fatalf("Decode(Encode(%s)) = %v", m.Type(), err)
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("Decode(Encode(%s)) = %+v, want %+v", m.Type(), got, m)
		}
	}
}

// frame encodes an envelope with an arbitrary body, valid or not.
func frame(t *testing.T, typ Type, body any) []byte {
	t.Helper()
	b, err := cbor.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	f, err := cbor.Marshal(envelope{Type: typ, Body: b})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestDecodeRejects(t *testing.T) {
	deep := []any{}
	for range 40 {
		deep = []any{deep}
	}
	tests := []struct {
		name  string
		frame []byte
		want  string
	}{
		{"empty", nil, "EOF"},
		{"not cbor", []byte("hello"), "malformed"},
		{"unknown type", frame(t, "launch_missiles", map[string]any{}), "unknown message type"},
		{"no body", mustMarshal(t, map[string]any{"type": "hello"}), "no body"},
		{"wrong field type", frame(t, TypeHello, map[string]any{"version": "one"}), "hello message"},
		{"hello without max jobs", frame(t, TypeHello, map[string]any{"version": 1}), "max_jobs"},
		{"empty detached build", frame(t, TypeHello, map[string]any{"version": 1, "max_jobs": 1, "detached_builds": []string{""}}), "detached_builds[0] is empty"},
		{"job 0", frame(t, TypeJobAccept, map[string]any{"job": 0}), "job is 0"},
		{"offer with both", frame(t, TypeJobOffer, map[string]any{"job": 1, "eval": map[string]any{}, "build": map[string]any{"drv_path": "x"}}), "exactly one"},
		{"chunk too big", frame(t, TypeNARChunk, map[string]any{"upload": 1, "data": make([]byte, MaxChunkSize+1)}), "data is"},
		{"bad file hash", frame(t, TypeNARBegin, map[string]any{"upload": 1, "info": map[string]any{"store_path": "/nix/store/x", "nar_hash": "h"}, "compression": "zstd", "file_size": 1, "file_hash": "zz"}), "file_hash"},
		{"other compression", frame(t, TypeNARBegin, map[string]any{"upload": 1, "info": map[string]any{"store_path": "/nix/store/x", "nar_hash": "h"}, "compression": "xz", "file_size": 1, "file_hash": strings.Repeat("a", 64)}), "compression"},
		{"too deep", frame(t, TypeHello, map[string]any{"version": 1, "systems": deep}), "exceeded max nested level"},
		{"duplicate key", []byte{0xa2, 0x64, 't', 'y', 'p', 'e', 0x61, 'x', 0x64, 't', 'y', 'p', 'e', 0x61, 'y'}, "duplicate"},
		{"indefinite length", []byte{0x9f, 0xff}, "indefinite-length"},
		{"trailing bytes", append(frame(t, TypeJobAccept, map[string]any{"job": 1}), 0), "extraneous data"},
	}
	for _, tc := range tests {
		_, err := Decode(tc.frame)
		if err == nil {
			t.Errorf("%s: Decode = nil error, want one containing %q", tc.name, tc.want)
			continue
		}
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: Decode = %v, want an error wrapping ErrMalformed", tc.name, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Decode = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func mustMarshal(t *testing.T, v any) []byte {
	t.Helper()
	b, err := cbor.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSeedFrames keeps testdata/frames, the fuzz seeds, in step with the
// message types: run with -update after changing a message.
func TestSeedFrames(t *testing.T) {
	dir := filepath.Join("testdata", "frames")
	for _, m := range sampleMessages() {
		want, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		name := filepath.Join(dir, string(m.Type())+"-"+shortHash(want)+".cbor")
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(name, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("seed frame of %s is missing: run go test ./protocol -run TestSeedFrames -update (%v)", m.Type(), err)
			continue
		}
		if string(got) != string(want) {
			t.Errorf("%s differs from Encode(%s): run with -update", name, m.Type())
		}
	}
}

func FuzzDecode(f *testing.F) {
	entries, err := os.ReadDir(filepath.Join("testdata", "frames"))
	if err != nil {
		f.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("testdata", "frames", e.Name()))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("Decode error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// A decoded message is valid, so it encodes and decodes again to
		// the same message.
		again, err := Encode(m)
		if err != nil {
			t.Fatalf("Encode(Decode(x)) = %v", err)
		}
		m2, err := Decode(again)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(x))) = %v", err)
		}
		if !reflect.DeepEqual(m, m2) {
			t.Fatalf("Decode(Encode(m)) = %+v, want %+v", m2, m)
		}
	})
}

func shortHash(b []byte) string {
	var h uint32 = 2166136261
	for _, c := range b {
		h = (h ^ uint32(c)) * 16777619
	}
	const hexDigits = "0123456789abcdef"
	out := make([]byte, 8)
	for i := range out {
		out[i] = hexDigits[(h>>(28-4*i))&0xf]
	}
	return string(out)
}
