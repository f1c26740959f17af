package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/gradient-ci/gradient/web"
)

// projectShow is the output of `gradient project show --json`.
type projectShow struct {
	Evaluation struct {
		ID          uint64 `json:"id"`
		Status      string `json:"status"`
		Error       string `json:"error"`
		EntryPoints []struct {
			Attr      string `json:"attr"`
			DrvPath   string `json:"drv_path"`
			EvalError string `json:"eval_error"`
			BuildID   uint64 `json:"build_id"`
		} `json:"entry_points"`
	} `json:"evaluation"`
	Builds []struct {
		ID               uint64            `json:"id"`
		DrvPath          string            `json:"drv_path"`
		Name             string            `json:"name"`
		Status           string            `json:"status"`
		Outputs          map[string]string `json:"outputs"`
		Error            string            `json:"error"`
		FailedDependency string            `json:"failed_dependency"`
		// FailedDependencyBuildID is the build of FailedDependency.
		FailedDependencyBuildID uint64 `json:"failed_dependency_build_id"`
	} `json:"builds"`
}

func exampleFlake(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("../../docs/examples/hello")
	if err != nil {
		t.Fatal(err)
	}
	return "path:" + dir
}

// TestStandaloneNode runs what a user does with a standalone node: serve,
// create a project, evaluate and build it, read the results, substitute
// from the cache with the real nix client and upload to it with nix copy.
func TestStandaloneNode(t *testing.T) {
	requireNix(t)
	if runtime.GOARCH != "amd64" {
		t.Skip("the example flake builds for x86_64-linux")
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	n := startNode(t, dataDir, storeDir(t, "worker-store"))

	// Step 1: the admin token is private and the cache has a key.
	st, err := os.Stat(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("admin-token mode = %v, want 0600", st.Mode().Perm())
	}
	var c web.Cache
	decodeJSON(t, n.mustCLI("cache", "show", "main", "--json"), &c)
	if !strings.HasPrefix(c.PublicKey, "e2e-1:") {
		t.Errorf("cache public key = %q, want prefix e2e-1:", c.PublicKey)
	}
	if c.URL != n.cacheURL() {
		t.Errorf("cache URL = %q, want %q", c.URL, n.cacheURL())
	}
	if !strings.Contains(n.logText(), c.PublicKey) {
		t.Errorf("node log does not show the public key %q", c.PublicKey)
	}

	// Step 2: bad input is rejected with a reason; a good project is created.
	badInputs := []struct {
		name string
		args []string
		want string
	}{
		{"relative flake path", []string{"project", "create", "demo/bad", "--flake", "relative/dir"}, "flake"},
		{"unknown flake scheme", []string{"project", "create", "demo/bad", "--flake", "ftp://host/x"}, "flake"},
		{"empty pattern segment", []string{"project", "create", "demo/bad", "--flake", exampleFlake(t), "--entry-points", "packages..x"}, "entry_points"},
		{"bad project name", []string{"project", "create", "demo/b@d", "--flake", exampleFlake(t)}, "name"},
		{"no org", []string{"project", "create", "hello", "--flake", exampleFlake(t)}, "ORG/PROJECT"},
	}
	for _, tc := range badInputs {
		_, errOut, code := n.cli(tc.args...)
		if code == 0 {
			t.Errorf("%s: exit 0, want an error", tc.name)
		}
		if !strings.Contains(errOut, tc.want) {
			t.Errorf("%s: stderr %q does not name %q", tc.name, errOut, tc.want)
		}
	}
	n.mustCLI("project", "create", "demo/hello", "--flake", exampleFlake(t))

	// Step 3: evaluate and build.
	_, progress, code := n.cli("project", "evaluate", "demo/hello", "--wait")
	if code != 0 {
		t.Fatalf("evaluate --wait: exit %d\n%s", code, progress)
	}
	if !strings.Contains(progress, "succeeded") {
		t.Errorf("evaluate --wait progress %q does not report success", progress)
	}

	// Step 4: show the evaluation and a build log.
	var show projectShow
	decodeJSON(t, n.mustCLI("project", "show", "demo/hello", "--json"), &show)
	if show.Evaluation.Status != "succeeded" {
		t.Fatalf("evaluation status = %q, want succeeded (error %q)", show.Evaluation.Status, show.Evaluation.Error)
	}
	wantAttrs := []string{
		"checks.x86_64-linux.hello-says-hello",
		"packages.x86_64-linux.default",
		"packages.x86_64-linux.greeting",
		"packages.x86_64-linux.hello",
	}
	var gotAttrs []string
	for _, ep := range show.Evaluation.EntryPoints {
		gotAttrs = append(gotAttrs, ep.Attr)
	}
	if strings.Join(gotAttrs, " ") != strings.Join(wantAttrs, " ") {
		t.Errorf("entry points = %v, want %v", gotAttrs, wantAttrs)
	}
	var helloOut string
	var helloBuild uint64
	for _, b := range show.Builds {
		if b.Status != "succeeded" {
			t.Errorf("build %d (%s) status = %q, want succeeded", b.ID, b.Name, b.Status)
		}
		if b.Name == "hello-1.0" {
			helloOut, helloBuild = b.Outputs["out"], b.ID
		}
	}
	if helloOut == "" {
		t.Fatalf("no output path for hello-1.0 in %+v", show.Builds)
	}
	human := n.mustCLI("project", "show", "demo/hello")
	if !strings.Contains(human, helloOut) || !strings.Contains(human, "packages.x86_64-linux.hello") {
		t.Errorf("project show does not list hello and its output:\n%s", human)
	}
	logText := n.mustCLI("build", "log", itoa(helloBuild))
	if !strings.Contains(logText, "hello-1.0") && !strings.Contains(logText, "building") {
		t.Errorf("build log of hello = %q, want nix's build output", logText)
	}

	// Step 5: substitute from the cache into another store, checking
	// signatures, and reject the paths under another key.
	other := storeDir(t, "other-store")
	copyFrom := func(key string) error {
		_, err := tryNix(append(nixArgs(other),
			"--option", "trusted-public-keys", key,
			"--option", "require-sigs", "true",
			"copy", "--from", n.cacheURL(), helloOut)...)
		return err
	}
	if err := copyFrom("wrong-1:" + strings.Repeat("A", 43) + "="); err == nil || !strings.Contains(err.Error(), "signature") {
		t.Errorf("nix copy with an untrusted key = %v, want a signature error", err)
	}
	if err := copyFrom(c.PublicKey); err != nil {
		t.Fatalf("nix copy --from the cache: %v", err)
	}
	got, err := os.ReadFile(filepath.Join(other, helloOut))
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile(filepath.Join(n.store, helloOut))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) || !bytes.HasPrefix(got, []byte("Hello from a Gradient build")) {
		t.Errorf("substituted content = %q, want %q", got, want)
	}

	// Step 6: upload with nix copy --to through a netrc file.
	uploadStore := storeDir(t, "upload-store")
	upFlake := writeFlake(t, `{ outputs = { self }: { packages.x86_64-linux.up = builtins.derivation {
		name = "uploaded"; system = "x86_64-linux"; builder = "/bin/sh";
		args = [ "-c" "echo uploaded by nix copy > $out" ]; }; }; }`)
	upOut := strings.TrimSpace(runNix(t, append(nixArgs(uploadStore), "eval", "--raw", upFlake+"#packages.x86_64-linux.up.outPath")...))
	runNix(t, append(nixArgs(uploadStore), "build", "--no-link", upFlake+"#packages.x86_64-linux.up")...)

	token, err := os.ReadFile(filepath.Join(dataDir, "admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	netrc := filepath.Join(t.TempDir(), "netrc")
	writeFile(t, netrc, "machine 127.0.0.1 login gradient password "+strings.TrimSpace(string(token))+"\n")
	badNetrc := filepath.Join(t.TempDir(), "netrc-bad")
	writeFile(t, badNetrc, "machine 127.0.0.1 login gradient password wrong\n")

	copyTo := func(netrcFile string) error {
		_, err := tryNix(append(nixArgs(uploadStore), "--option", "netrc-file", netrcFile,
			"copy", "--to", n.cacheURL(), upOut)...)
		return err
	}
	if err := copyTo(badNetrc); err == nil {
		t.Errorf("nix copy --to with a wrong token succeeded, want 401")
	}
	if err := copyTo(netrc); err != nil {
		t.Fatalf("nix copy --to the cache: %v", err)
	}
	hash := strings.SplitN(filepath.Base(upOut), "-", 2)[0]
	resp, err := http.Get(n.cacheURL() + "/" + hash + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(body, "StorePath: "+upOut) {
		t.Fatalf("GET uploaded narinfo: %d %q", resp.StatusCode, body)
	}
	if !strings.Contains(body, "Sig: e2e-1:") {
		t.Errorf("uploaded narinfo has no signature by the node's key:\n%s", body)
	}

	// A narinfo whose NarSize does not match the uploaded NAR is rejected
	// and nothing is stored under its store path.
	nar := []byte(runNix(t, append(nixArgs(uploadStore), "store", "dump-path", upOut)...))
	sum := sha256.Sum256(nar)
	narFile := "nar/" + nixbase32.EncodeToString(sum[:]) + ".nar"
	authPut := func(path string, body []byte) (int, string) {
		req, err := http.NewRequest(http.MethodPut, n.cacheURL()+"/"+path, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		return resp.StatusCode, readAll(t, resp.Body)
	}
	if code, msg := authPut(narFile, nar); code/100 != 2 {
		t.Fatalf("PUT %s = %d %q", narFile, code, msg)
	}
	fakeHash := "0" + hash[1:]
	fakePath := strings.Replace(upOut, hash, fakeHash, 1)
	narHash := "sha256:" + nixbase32.EncodeToString(sum[:])
	tampered := "StorePath: " + fakePath + "\nURL: " + narFile + "\nCompression: none\n" +
		"NarHash: " + narHash + "\nNarSize: 999\nReferences: \n"
	code, msg := authPut(fakeHash+".narinfo", []byte(tampered))
	if code != http.StatusBadRequest || !strings.Contains(msg, "NarSize") {
		t.Errorf("PUT narinfo with a wrong NarSize = %d %q, want 400 naming NarSize", code, msg)
	}
	resp, err = http.Get(n.cacheURL() + "/" + fakeHash + ".narinfo")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET narinfo after the rejected upload = %d, want 404", resp.StatusCode)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeFlake writes flake.nix into a new directory and returns its path:
// flake reference.
func writeFlake(t *testing.T, src string) string {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "flake.nix"), src)
	return "path:" + dir
}

func itoa(id uint64) string {
	b, _ := json.Marshal(id)
	return string(b)
}
