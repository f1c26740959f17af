package narinfo

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixhash"
)

// The files in testdata were written by nix 2.8 with
//
//	nix copy --to 'file://DIR?compression=C&secret-key=sk' PATH
//
// for C in xz, zstd and none, from a chroot store holding two trivial
// derivations, one referring to the other. testdata-cache-1.pub is the
// public key of sk.

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()

	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}

	return data
}

func testdataNarInfos(t testing.TB) map[string][]byte {
	t.Helper()

	paths, err := filepath.Glob(filepath.Join("testdata", "*.narinfo"))
	if err != nil || len(paths) == 0 {
		t.Fatalf("no testdata narinfo files: %v", err)
	}

	files := map[string][]byte{}
	for _, p := range paths {
		files[filepath.Base(p)] = readTestdata(t, filepath.Base(p))
	}

	return files
}

func testdataKey(t testing.TB) PublicKey {
	t.Helper()

	key, err := ParsePublicKey(string(readTestdata(t, "testdata-cache-1.pub")))
	if err != nil {
		t.Fatal(err)
	}

	return key
}

func mustParse(t testing.TB, data string) *NarInfo {
	t.Helper()

	info, err := Parse(strings.NewReader(data))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}

	return info
}

func TestParseFormatRoundTrip(t *testing.T) {
	for name, data := range testdataNarInfos(t) {
		t.Run(name, func(t *testing.T) {
			info := mustParse(t, string(data))

			if got := Format(info); !bytes.Equal(got, data) {
				t.Errorf("Format(Parse(%s)) =\n%s\nwant\n%s", name, got, data)
			}
		})
	}
}

func TestVerifyNixSignatures(t *testing.T) {
	trusted := []PublicKey{testdataKey(t)}

	_, other, err := GenerateKey("testdata-cache-1")
	if err != nil {
		t.Fatal(err)
	}

	for name, data := range testdataNarInfos(t) {
		t.Run(name, func(t *testing.T) {
			info := mustParse(t, string(data))

			if err := Verify(info, trusted); err != nil {
				t.Errorf("Verify(%s, nix's key) = %v, want nil", name, err)
			}

			if err := Verify(info, []PublicKey{other}); !errors.Is(err, ErrNoTrustedSignature) {
				t.Errorf("Verify(%s, same name other key) = %v, want ErrNoTrustedSignature", name, err)
			}

			info.NarSize++
			if err := Verify(info, trusted); !errors.Is(err, ErrNoTrustedSignature) {
				t.Errorf("Verify(%s with NarSize changed) = %v, want ErrNoTrustedSignature", name, err)
			}
		})
	}
}

func TestFingerprint(t *testing.T) {
	info := mustParse(t, string(readTestdata(t, "top-xz.narinfo")))

	want := "1;/nix/store/72sfclc5jb4sk40azqbvmriysa0gsbw9-gradient-top;" +
		"sha256:1k9yp5p1wnkvzz03xy9fh91jihblpqq2ksmd6b05ap4f3i2g184q;176;" +
		"/nix/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep"

	got, err := Fingerprint(info)
	if err != nil || got != want {
		t.Errorf("Fingerprint(top-xz) = %q, %v, want %q", got, err, want)
	}

	info.StorePath = "/gnu/store/72sfclc5jb4sk40azqbvmriysa0gsbw9-gradient-top"
	info.References = []string{"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b", "3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep", "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b"}
	want = "1;/gnu/store/72sfclc5jb4sk40azqbvmriysa0gsbw9-gradient-top;" +
		"sha256:1k9yp5p1wnkvzz03xy9fh91jihblpqq2ksmd6b05ap4f3i2g184q;176;" +
		"/gnu/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep,/gnu/store/zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz-b"

	got, err = Fingerprint(info)
	if err != nil || got != want {
		t.Errorf("Fingerprint(unsorted refs in /gnu/store) = %q, %v, want %q", got, err, want)
	}
}

func TestSignThenVerify(t *testing.T) {
	secret, public, err := GenerateKey("gradient-test-1")
	if err != nil {
		t.Fatal(err)
	}

	info := mustParse(t, string(readTestdata(t, "dep-zstd.narinfo")))

	if err := Sign(info, secret); err != nil {
		t.Fatalf("Sign: %v", err)
	}

	if err := Sign(info, secret); err != nil {
		t.Fatalf("second Sign: %v", err)
	}

	if got := len(info.Signatures); got != 2 {
		t.Errorf("len(Signatures) after signing twice = %d, want 2 (nix's and one of ours)", got)
	}

	if err := Verify(info, []PublicKey{public}); err != nil {
		t.Errorf("Verify(signed, own key) = %v, want nil", err)
	}

	reparsed := mustParse(t, string(Format(info)))
	if err := Verify(reparsed, []PublicKey{public, testdataKey(t)}); err != nil {
		t.Errorf("Verify(Parse(Format(signed))) = %v, want nil", err)
	}

	roundTrip, err := ParseSecretKey(secret.String())
	if err != nil || roundTrip.String() != secret.String() {
		t.Errorf("ParseSecretKey(secret.String()) = %v, %v, want the same key", roundTrip.String() == secret.String(), err)
	}
}

func TestVerifyLooksPastBadSignature(t *testing.T) {
	info := mustParse(t, string(readTestdata(t, "dep-xz.narinfo")))
	good := info.Signatures[0]

	bad := good
	bad.Data = bytes.Clone(good.Data)
	bad.Data[0] ^= 0xff
	info.Signatures = append(info.Signatures[:0:0], bad, good)

	if err := Verify(info, []PublicKey{testdataKey(t)}); err != nil {
		t.Errorf("Verify(bad then good signature of the same key) = %v, want nil", err)
	}
}

func TestGenerateKeyRejectsBadName(t *testing.T) {
	for _, name := range []string{"", "a:b", "a b"} {
		if _, _, err := GenerateKey(name); err == nil {
			t.Errorf("GenerateKey(%q) = nil error, want an error", name)
		}
	}
}

// depXZ is testdata/dep-xz.narinfo with its fields as constants, for
// cases that change one line.
const depXZ = `StorePath: /nix/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep
URL: nar/1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j.nar.xz
Compression: xz
FileHash: sha256:1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j
FileSize: 128
NarHash: sha256:00kjynz8n03652qccs76ivsvark3pr3dfr6w1ba3x7bx83kcknvv
NarSize: 120
References: 
Deriver: m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep.drv
Sig: testdata-cache-1:l7AYR9jGp4bZDoRcWEgZgJJGwzw8Fu45dZVCHAwLBIzKCgbcIbtJ+rlxIDdMHWgWFq2N7hnsNrH0v4+U5rl5AQ==
`

func replaceLine(data, prefix, line string) string {
	lines := strings.Split(data, "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, prefix) {
			lines[i] = line
		}
	}

	return strings.Join(lines, "\n")
}

func TestParseAccepts(t *testing.T) {
	narHash := mustParse(t, depXZ).NarHash

	tests := []struct {
		name  string
		input string
		check func(t *testing.T, info *NarInfo)
	}{
		{
			name:  "unknown key with colon and space in value",
			input: depXZ + "X-Future: a: b: c\n",
		},
		{
			name:  "System value with colon and space",
			input: depXZ + "System: x86_64-linux: extra\n",
			check: func(t *testing.T, info *NarInfo) {
				if info.System != "x86_64-linux: extra" {
					t.Errorf("System = %q, want %q", info.System, "x86_64-linux: extra")
				}
			},
		},
		{
			name:  "NarHash in base16",
			input: replaceLine(depXZ, "NarHash:", "NarHash: "+narHash.Format(nixhash.Base16, true)),
		},
		{
			name:  "NarHash in base64",
			input: replaceLine(depXZ, "NarHash:", "NarHash: "+narHash.Format(nixhash.Base64, true)),
		},
		{
			name:  "NarHash in SRI",
			input: replaceLine(depXZ, "NarHash:", "NarHash: "+narHash.Format(nixhash.SRI, true)),
		},
		{
			name:  "FileHash in SRI",
			input: replaceLine(depXZ, "FileHash:", "FileHash: sha256-"+mustParse(t, depXZ).FileHash.Format(nixhash.Base64, false)),
		},
		{
			name:  "missing Compression means bzip2",
			input: replaceLine(depXZ, "Compression:", ""),
			check: func(t *testing.T, info *NarInfo) {
				if info.Compression != "bzip2" {
					t.Errorf("Compression = %q, want bzip2", info.Compression)
				}
			},
		},
		{
			name:  "References without trailing space",
			input: replaceLine(depXZ, "References:", "References:"),
		},
		{
			name:  "two References lines",
			input: replaceLine(depXZ, "References:", "References: 3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a\nReferences: 3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-b  3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-c"),
			check: func(t *testing.T, info *NarInfo) {
				if len(info.References) != 3 {
					t.Errorf("References = %q, want 3 paths", info.References)
				}
			},
		},
		{
			name:  "unknown-deriver",
			input: replaceLine(depXZ, "Deriver:", "Deriver: unknown-deriver"),
			check: func(t *testing.T, info *NarInfo) {
				if info.Deriver != "" {
					t.Errorf("Deriver = %q, want empty", info.Deriver)
				}
			},
		},
		{
			name:  "no trailing newline",
			input: strings.TrimSuffix(depXZ, "\n"),
		},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			info, err := Parse(strings.NewReader(tt.input))
			if err != nil {
				t.Fatalf("Parse(%s) = %v, want nil error", tt.name, err)
			}

			if !sameHash(&info.NarHash.Hash, &narHash.Hash) {
				t.Errorf("Parse(%s).NarHash = %v, want %v", tt.name, info.NarHash, narHash)
			}

			if tt.check != nil {
				tt.check(t, info)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	tests := []struct {
		name      string
		input     string
		wantField string // empty for errors that are not about one field
		wantText  string
	}{
		{name: "missing StorePath", input: replaceLine(depXZ, "StorePath:", ""), wantField: "StorePath", wantText: "missing"},
		{name: "relative StorePath", input: replaceLine(depXZ, "StorePath:", "StorePath: 3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep"), wantField: "StorePath"},
		{name: "StorePath with bad hash", input: replaceLine(depXZ, "StorePath:", "StorePath: /nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"), wantField: "StorePath"},
		{name: "StorePath named ..", input: replaceLine(depXZ, "StorePath:", "StorePath: /nix/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-.."), wantField: "StorePath"},
		{name: "StorePath with slash in name", input: replaceLine(depXZ, "StorePath:", "StorePath: /nix/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a/b"), wantField: "StorePath"},
		{name: "StorePath in unclean dir", input: replaceLine(depXZ, "StorePath:", "StorePath: /nix/../store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a"), wantField: "StorePath"},
		{name: "missing URL", input: replaceLine(depXZ, "URL:", ""), wantField: "URL", wantText: "missing"},
		{name: "missing NarHash", input: replaceLine(depXZ, "NarHash:", ""), wantField: "NarHash", wantText: "missing"},
		{name: "NarHash md5", input: replaceLine(depXZ, "NarHash:", "NarHash: md5:00000000000000000000000000000000"), wantField: "NarHash", wantText: "SHA-256"},
		{name: "NarHash garbage", input: replaceLine(depXZ, "NarHash:", "NarHash: sha256:xyz"), wantField: "NarHash"},
		{name: "NarHash base64 without padding", input: replaceLine(depXZ, "NarHash:", "NarHash: sha256:"+strings.Repeat("A", 44)), wantField: "NarHash", wantText: "33 bytes"},
		{name: "NarSize zero", input: replaceLine(depXZ, "NarSize:", "NarSize: 0"), wantField: "NarSize"},
		{name: "NarSize missing", input: replaceLine(depXZ, "NarSize:", ""), wantField: "NarSize"},
		{name: "NarSize negative", input: replaceLine(depXZ, "NarSize:", "NarSize: -1"), wantField: "NarSize", wantText: "invalid size"},
		{name: "FileSize not a number", input: replaceLine(depXZ, "FileSize:", "FileSize: 12k"), wantField: "FileSize"},
		{name: "bad reference", input: replaceLine(depXZ, "References:", "References: ../../etc/passwd"), wantField: "References"},
		{name: "absolute reference", input: replaceLine(depXZ, "References:", "References: /nix/store/3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a"), wantField: "References"},
		{name: "Deriver not a drv", input: replaceLine(depXZ, "Deriver:", "Deriver: m0mir4536c41drwx3x4nw38qybp5nw8n-gradient-dep"), wantField: "Deriver"},
		{name: "bad Sig", input: replaceLine(depXZ, "Sig:", "Sig: testdata-cache-1:bm90IGEgc2lnbmF0dXJl"), wantField: "Sig", wantText: "not the right size"},
		{name: "Sig without name", input: replaceLine(depXZ, "Sig:", "Sig: nocolon"), wantField: "Sig"},
		{name: "duplicate NarSize", input: depXZ + "NarSize: 120\n", wantField: "NarSize", wantText: "more than once"},
		{name: "Compression none with other FileSize", input: replaceLine(depXZ, "Compression:", "Compression: none"), wantField: "FileSize"},
		{name: "line without colon", input: depXZ + "garbage\n", wantText: "line 11"},
		{name: "no space after colon", input: depXZ + "System:x86_64-linux\n", wantText: "missing space"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.input))
			if err == nil {
				t.Fatalf("Parse(%s) = nil error, want an error", tt.name)
			}

			var fieldErr *FieldError
			isField := errors.As(err, &fieldErr)

			switch {
			case tt.wantField != "" && !isField:
				t.Errorf("Parse(%s) = %v, want a *FieldError for %s", tt.name, err, tt.wantField)
			case tt.wantField != "" && fieldErr.Field != tt.wantField:
				t.Errorf("Parse(%s) error field = %s, want %s", tt.name, fieldErr.Field, tt.wantField)
			case tt.wantField != "" && !strings.HasPrefix(err.Error(), "narinfo field "+tt.wantField+": "):
				t.Errorf("Parse(%s) = %q, want it to start with %q", tt.name, err, "narinfo field "+tt.wantField+": ")
			}

			if !strings.Contains(err.Error(), tt.wantText) {
				t.Errorf("Parse(%s) = %q, want it to contain %q", tt.name, err, tt.wantText)
			}
		})
	}
}

func TestParseBounds(t *testing.T) {
	tests := []struct {
		name  string
		input string
	}{
		{name: "input over MaxSize", input: depXZ + strings.Repeat("X-Pad: "+strings.Repeat("a", 1000)+"\n", MaxSize/1000)},
		{name: "line over MaxLineSize", input: depXZ + "X-Long: " + strings.Repeat("a", MaxLineSize) + "\n"},
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(strings.NewReader(tt.input))
			if !errors.Is(err, ErrTooLarge) {
				t.Errorf("Parse(%s) = %v, want ErrTooLarge", tt.name, err)
			}
		})
	}

	// A References line of 3000 paths is long but allowed.
	refs := strings.Repeat(" 3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-some-library-1.2.3", 3000)
	if _, err := Parse(strings.NewReader(replaceLine(depXZ, "References:", "References:"+refs))); err != nil {
		t.Errorf("Parse(3000 references) = %v, want nil", err)
	}
}

func TestCheckBaseName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-gradient-dep", true},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a+b_c?d=e.f", true},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-.hidden", true},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-" + strings.Repeat("a", 211), true},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-" + strings.Repeat("a", 212), false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-.", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-..", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf_x", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgfx-y", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahge-x", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a b", false},
		{"3y3xy7dcg4jhkkbs8ka0bv5ss38zahgf-a/b", false},
		{"", false},
	}

	for _, tt := range tests {
		err := CheckBaseName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("CheckBaseName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}

		if err != nil && !errors.Is(err, ErrInvalidStorePath) {
			t.Errorf("CheckBaseName(%q) = %v, want it to wrap ErrInvalidStorePath", tt.name, err)
		}
	}
}

// FuzzParse checks that Parse never panics and that whatever it accepts,
// Format writes in a form Parse reads back to the same narinfo.
func FuzzParse(f *testing.F) {
	for _, data := range testdataNarInfos(f) {
		f.Add(data)
	}

	f.Add([]byte(depXZ + "X-Future: a: b\nSystem: x86_64-linux\nCA: fixed:r:sha256:1xsjkazpfgyyy38br89kz2plvdb4dkqcjl5mh0n2py3ndf0sc48j\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		info, err := Parse(bytes.NewReader(data))
		if err != nil {
			return
		}

		formatted := Format(info)

		again, err := Parse(bytes.NewReader(formatted))
		if err != nil {
			t.Fatalf("Parse(Format(Parse(%q))) = %v, want nil error", data, err)
		}

		if reformatted := Format(again); !bytes.Equal(reformatted, formatted) {
			t.Fatalf("Format is not stable:\n%s\nthen\n%s", formatted, reformatted)
		}

		if _, err := Fingerprint(info); err != nil {
			t.Fatalf("Fingerprint of a parsed narinfo = %v, want nil error", err)
		}
	})
}
