package federation

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/libp2p/go-libp2p/core/peer"

	"github.com/gradient-ci/gradient/cache/narinfo"
	"github.com/gradient-ci/gradient/mesh/internal/scripttest"
)

// TestScript runs testdata/federation.txt. Commands:
//
//	parse              input: a federation file; prints it as MarshalJSON does
//	admits PEER...     prints each peer's organisation or "no"
//	trust ORG PEER KEY prints the new federation, or the error
//	keys               prints the trusted key names
func TestScript(t *testing.T) {
	var f *Federation

	scripttest.Run(t, "testdata/federation.txt", func(t *testing.T, c *scripttest.Command) string {
		switch c.Name {
		case "parse":
			parsed, err := Parse(strings.NewReader(strings.Join(c.Input, "\n")))
			if err != nil {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("%s: Parse = %v, want it to wrap ErrInvalid", c.Pos, err)
				}
				return "error: " + err.Error()
			}
			f = parsed
			return marshal(t, f)
		case "admits":
			var lines []string
			for _, arg := range c.Args {
				id, err := peer.Decode(arg)
				if err != nil {
					t.Fatalf("%s: %v", c.Pos, err)
				}
				org, ok := f.OrgOf(id)
				if ok != f.Admits(id) {
					t.Errorf("%s: OrgOf and Admits disagree on %s", c.Pos, id)
				}
				if !ok {
					org = "no"
				}
				lines = append(lines, arg+" "+org)
			}
			return strings.Join(lines, "\n")
		case "trust":
			id, err := peer.Decode(c.Args[1])
			if err != nil {
				t.Fatalf("%s: %v", c.Pos, err)
			}
			key, err := narinfo.ParsePublicKey(c.Args[2])
			if err != nil {
				t.Fatalf("%s: %v", c.Pos, err)
			}
			trusted, err := f.Trust(c.Args[0], id, key)
			if err != nil {
				return "error: " + err.Error()
			}
			f = trusted
			return marshal(t, f)
		case "keys":
			var names []string
			for _, k := range f.Keys() {
				names = append(names, k.Name)
			}
			return strings.Join(names, " ")
		}

		t.Fatalf("%s: unknown command %q", c.Pos, c.Name)
		return ""
	})
}

// marshal returns f as MarshalJSON writes it, compacted to one line.
func marshal(t *testing.T, f *Federation) string {
	data, err := f.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil {
		t.Fatal(err)
	}
	return compact.String()
}

func TestZeroFederation(t *testing.T) {
	var f Federation
	if got := f.RecordLifetime(); got != DefaultRecordLifetime {
		t.Errorf("Federation{}.RecordLifetime() = %s, want %s", got, DefaultRecordLifetime)
	}
	if f.Admits("anyone") {
		t.Errorf("Federation{}.Admits(anyone) = true, want false")
	}
}

func TestParseRejectsLargeFile(t *testing.T) {
	data := `{"members": [], "x": "` + strings.Repeat("a", MaxFileSize) + `"}`
	if _, err := Parse(strings.NewReader(data)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("Parse(%d bytes) = %v, want ErrInvalid about the length", len(data), err)
	}
}

// FuzzParse checks that Parse never panics and that what it accepts,
// MarshalJSON writes in a form Parse reads back the same.
func FuzzParse(f *testing.F) {
	seeds, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no testdata federation files: %v", err)
	}
	for _, path := range seeds {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		fed, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}
		out, err := fed.MarshalJSON()
		if err != nil {
			t.Fatalf("MarshalJSON(Parse(%q)) = %v", data, err)
		}
		again, err := Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("Parse(MarshalJSON(Parse(%q))) = %v, want nil error", data, err)
		}
		out2, _ := again.MarshalJSON()
		if !bytes.Equal(out, out2) {
			t.Fatalf("MarshalJSON is not stable:\n%s\nthen\n%s", out, out2)
		}
		for _, id := range fed.PeerIDs() {
			if !again.Admits(id) {
				t.Fatalf("round trip lost peer %s", id)
			}
		}
		_ = fmt.Sprint(fed.Members())
	})
}
