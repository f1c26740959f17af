package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The end-to-end tests drive the real nix client against the handler on a
// loopback httptest server. They need root, because nix builds into
// chroot stores with a sandbox, and /bin/busybox as the builder's /bin/sh.

const e2eToken = "e2e-upload-token"

// testDerivations builds a path that refers to another, so an upload must
// send the dependency first.
const testDerivations = `
let
  dep = builtins.derivation {
    name = "gradient-cache-dep";
    system = "x86_64-linux";
    builder = "/bin/sh";
    args = [ "-c" "echo dep > $out" ];
  };
in builtins.derivation {
  name = "gradient-cache-top";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "echo ${dep} > $out" ];
}
`

// nixEnv runs nix with its own configuration and cache directories, so
// neither /etc/nix/nix.conf nor an earlier run's narinfo cache applies.
type nixEnv struct {
	t    *testing.T
	home string
}

func requireNix(t *testing.T) *nixEnv {
	t.Helper()

	if _, err := exec.LookPath("nix"); err != nil {
		if os.Getenv("GRADIENT_REQUIRE_NIX") == "1" {
			t.Fatalf("nix not found and GRADIENT_REQUIRE_NIX=1: %v", err)
		}

		t.Skip("nix not found on PATH")
	}

	if os.Geteuid() != 0 {
		if os.Getenv("GRADIENT_REQUIRE_NIX") == "1" {
			t.Fatal("building into a chroot store needs root and GRADIENT_REQUIRE_NIX=1")
		}

		t.Skip("building into a chroot store needs root")
	}

	home := t.TempDir()
	for _, dir := range []string{"conf", "xdg"} {
		if err := os.MkdirAll(filepath.Join(home, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}

	return &nixEnv{t: t, home: home}
}

// newStoreDir returns a directory for a chroot store that is made
// writable again before the test's cleanup removes it.
func (e *nixEnv) newStoreDir() string {
	dir := e.t.TempDir()

	e.t.Cleanup(func() {
		exec.Command("chmod", "-R", "u+w", dir).Run()
	})

	return dir
}

// run runs nix with args after the common options and returns its
// standard output and standard error.
func (e *nixEnv) run(ctx context.Context, store string, args ...string) (stdout, stderr string, err error) {
	common := []string{
		"--extra-experimental-features", "nix-command flakes",
		"--store", store,
		"--option", "sandbox", "true",
		"--option", "sandbox-paths", "/bin/sh=/bin/busybox",
		"--option", "build-users-group", "",
		"--option", "substituters", "",
		"--option", "narinfo-cache-negative-ttl", "0",
		"--option", "narinfo-cache-positive-ttl", "0",
	}

	cmd := exec.CommandContext(ctx, "nix", append(common, args...)...)
	cmd.Env = append(os.Environ(),
		"HOME="+e.home,
		"XDG_CACHE_HOME="+filepath.Join(e.home, "xdg"),
		"XDG_CONFIG_HOME="+filepath.Join(e.home, "xdg"),
		"NIX_CONF_DIR="+filepath.Join(e.home, "conf"),
	)

	var out, errOut bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errOut

	err = cmd.Run()

	return out.String(), errOut.String(), err
}

// build builds testDerivations into store and returns the output path of
// the top derivation.
func (e *nixEnv) build(ctx context.Context, store string) (top string) {
	e.t.Helper()

	file := filepath.Join(e.home, "derivations.nix")
	if err := os.WriteFile(file, []byte(testDerivations), 0o644); err != nil {
		e.t.Fatal(err)
	}

	stdout, stderr, err := e.run(ctx, store, "build", "--no-link", "--json", "-f", file)
	if err != nil {
		e.t.Fatalf("nix build: %v\n%s", err, stderr)
	}

	var results []struct {
		Outputs map[string]string `json:"outputs"`
	}
	if err := json.Unmarshal([]byte(stdout), &results); err != nil || len(results) != 1 {
		e.t.Fatalf("nix build --json printed %q: %v", stdout, err)
	}

	return results[0].Outputs["out"]
}

func (e *nixEnv) writeNetrc(token string) string {
	e.t.Helper()

	path := filepath.Join(e.home, "netrc")
	netrc := "machine 127.0.0.1\nlogin gradient\npassword " + token + "\n"

	if err := os.WriteFile(path, []byte(netrc), 0o600); err != nil {
		e.t.Fatal(err)
	}

	return path
}

// startCacheServer serves s at /cache/main/ on loopback and accepts
// uploads whose Basic password is e2eToken.
func startCacheServer(t *testing.T, s *Store) *httptest.Server {
	t.Helper()

	authorize := func(r *http.Request) bool {
		_, password, ok := r.BasicAuth()
		return ok && password == e2eToken
	}

	mux := http.NewServeMux()
	mux.Handle("/cache/main/", http.StripPrefix("/cache/main", s.Handler(HandlerOptions{Authorize: authorize})))

	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)

	return srv
}

func TestNixCopyRoundTrip(t *testing.T) {
	env := requireNix(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	source := env.newStoreDir()
	top := env.build(ctx, source)
	netrc := env.writeNetrc(e2eToken)

	otherSecret, otherPublic, err := GenerateKey("other-cache-1")
	if err != nil || otherSecret == "" {
		t.Fatal(err)
	}

	for _, compression := range []string{"xz", "zstd", "none"} {
		t.Run(compression, func(t *testing.T) {
			s := newTestStore(t, nil)
			srv := startCacheServer(t, s)
			cacheURL := srv.URL + "/cache/main"

			_, stderr, err := env.run(ctx, source, "copy", "--option", "netrc-file", netrc,
				"--to", cacheURL+"?compression="+compression, top)
			if err != nil {
				t.Fatalf("nix copy --to: %v\n%s", err, stderr)
			}

			has, err := s.HasPath(ctx, top)
			if err != nil || !has {
				t.Fatalf("HasPath(%q) after nix copy --to = %v, %v, want true, nil", top, has, err)
			}

			dest := env.newStoreDir()

			_, stderr, err = env.run(ctx, dest, "copy", "--option", "trusted-public-keys", s.PublicKey(),
				"--from", cacheURL, top)
			if err != nil {
				t.Fatalf("nix copy --from with the cache's key: %v\n%s", err, stderr)
			}

			_, stderr, err = env.run(ctx, dest, "store", "verify", "--recursive",
				"--option", "trusted-public-keys", s.PublicKey(), top)
			if err != nil {
				t.Errorf("nix store verify of the copied path: %v\n%s", err, stderr)
			}

			assertSameFile(t, filepath.Join(source, top), filepath.Join(dest, top))

			untrusting := env.newStoreDir()

			_, stderr, err = env.run(ctx, untrusting, "copy", "--option", "trusted-public-keys", otherPublic,
				"--from", cacheURL, top)
			if err == nil {
				t.Errorf("nix copy --from with another key succeeded, want a signature error")
			} else if !strings.Contains(stderr, "signature") {
				t.Errorf("nix copy --from with another key failed without mentioning a signature:\n%s", stderr)
			}

			if _, err := os.Lstat(filepath.Join(untrusting, top)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("nix copy --from with another key left %s in the store (Lstat error %v)", top, err)
			}
		})
	}
}

func TestNixCopyRejectsWrongToken(t *testing.T) {
	env := requireNix(t)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	source := env.newStoreDir()
	top := env.build(ctx, source)
	netrc := env.writeNetrc("wrong-token")

	s := newTestStore(t, nil)
	srv := startCacheServer(t, s)

	_, stderr, err := env.run(ctx, source, "copy", "--option", "netrc-file", netrc, "--to", srv.URL+"/cache/main", top)
	if err == nil {
		t.Fatal("nix copy --to with a wrong token succeeded, want 401")
	}

	if !strings.Contains(stderr, "401") {
		t.Errorf("nix copy --to with a wrong token failed without a 401:\n%s", stderr)
	}

	has, err := s.HasPath(ctx, top)
	if err != nil || has {
		t.Errorf("HasPath(%q) after rejected upload = %v, %v, want false, nil", top, has, err)
	}
}

func assertSameFile(t *testing.T, want, got string) {
	t.Helper()

	wantData, err := os.ReadFile(want)
	if err != nil {
		t.Fatal(err)
	}

	gotData, err := os.ReadFile(got)
	if err != nil {
		t.Fatalf("read copied path: %v", err)
	}

	if !bytes.Equal(wantData, gotData) {
		t.Errorf("copied %s contains %q, want %q", got, gotData, wantData)
	}
}
